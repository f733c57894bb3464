"""One configuration holding the assignment's defaults; validated in full, saved with every run.

Each section is a pydantic dataclass: fields are typed (no silent coercion of a string into a
list), ranges and choices are checked, unknown keys are refused, and cross-field rules (fractions
summing to 1, ``retrieval.k`` within the database) run whenever a Config is built. The whole object
is written to ``runs/<name>/config.json``, so a run can always be reproduced.

Fields marked :data:`RESUMABLE` may differ between an interrupted run and its continuation (where
the data lives, which device and kernels run it, how long it may go on); everything else must
match the saved run.

Settings reach a Config in one way: a dict of sections (from defaults, a preset, a ``--config``
file) with ``SECTION.KEY=VALUE`` overrides applied, then :meth:`Config.from_dict`, which validates
everything before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Annotated, Any, Literal

import pydantic
from pydantic import ConfigDict, Field, TypeAdapter, field_validator, model_validator
from pydantic.dataclasses import dataclass

from neuralcodes import datasets as registry
from neuralcodes import features
from neuralcodes.errors import NeuralCodesError
from neuralcodes.imageio import DEFAULT_MAX_PIXELS


class _Resumable:
    """Marker in a field's ``Annotated`` metadata: the setting may change when resuming."""

    def __repr__(self) -> str:
        return "RESUMABLE"


RESUMABLE = _Resumable()

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
#: The CPU convolution kernels of conv2-conv5, in the order a timing tie prefers them
#: (neuralcodes.kernels.choice); ``train.cpu_conv`` is one of them or ``auto``.
KERNELS: tuple[str, ...] = ("onednn", "nnpack")
CPU_CONVS: tuple[str, ...] = ("auto", *sorted(KERNELS))
CpuConv = Literal[CPU_CONVS]  # type: ignore[valid-type]
#: Upload limits of ``neuralcodes serve`` (serve.max_upload_mb, serve.max_megapixels): their
#: defaults (the pixel limit is the decoder's own, imageio.DEFAULT_MAX_PIXELS).
#: fewer out-of-domain classes than this make retrieval trivial: with one, every retrieved
#: image is relevant and mAP is 100% whatever the codes
MIN_OOD_CLASSES = 2
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_MEGAPIXELS = DEFAULT_MAX_PIXELS / 1e6
#: Families of the methods study (neuralcodes.retrieval.methods.FAMILIES reads this).
METHOD_FAMILIES: tuple[str, ...] = ("pooling", "whitening", "reranking")

_STRICT = ConfigDict(extra="forbid", validate_assignment=True, strict=False)
PositiveInt = Annotated[int, Field(ge=1, strict=True)]
#: What ``data.url`` (and ``$NEURALCODES_URL``) may be: an address urllib can download.
URL_PATTERN = r"(https?|ftp|file)://\S+"


@dataclass(config=_STRICT)
class DataConfig:
    """Where the images come from and how they are split (assignment: "Data")."""

    # archive, folder, or None: download the dataset's archive
    source: Annotated[str | None, RESUMABLE] = None
    # what `source` is (neuralcodes.datasets): auto (found from its layout), tiny-imagenet
    # or image-folder (one subfolder of images per class)
    dataset: Annotated[str, RESUMABLE] = "auto"
    # None: $NEURALCODES_CACHE or ~/.cache/neuralcodes
    cache_dir: Annotated[str | None, RESUMABLE] = None
    # where to download the official archive from, e.g. a mirror of the same file (the md5 is
    # checked either way); None: $NEURALCODES_URL, else the cs231n address
    url: Annotated[str | None, RESUMABLE] = None
    # the last N classes in sorted wnid order are out-of-domain
    ood_classes: Annotated[int, Field(ge=MIN_OOD_CLASSES, strict=True)] = 10
    # explicit out-of-domain wnids (overrides ood_classes)
    ood_wnids: list[Annotated[str, Field(pattern=r"^\S+$")]] | None = None
    ood_random: bool = False  # draw the ood classes at random with `seed` instead of the last N
    seed: Annotated[int, Field(ge=0, strict=True)] = 42  # the in-domain shuffle (and ood order)
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test
    max_classes: PositiveInt | None = None  # use only the first N classes (quick runs)
    max_per_class: PositiveInt | None = None  # use only the first N images of each class

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v not in registry.CHOICES:
            raise ValueError(f"unknown dataset {v!r} (choose from {', '.join(registry.CHOICES)})")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(URL_PATTERN, v):
            raise ValueError(f"not a download address (http://, https://, ftp:// or file://): "
                             f"{v!r}")
        return v

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0 or abs(sum(v) - 1) > 1e-6:
            raise ValueError(f"train/val/test fractions must be positive and sum to 1, got {v}")
        return v

    @model_validator(mode="after")
    def _classes(self) -> DataConfig:
        spec = registry.for_config(self.dataset, self.source)
        if spec is not None and self.source is None and spec.remote is None:
            raise ValueError(f"the {spec.title} dataset cannot be downloaded: set data.source "
                             "(--data FOLDER)")
        n_ood = len(set(self.ood_wnids)) if self.ood_wnids else self.ood_classes
        if n_ood < MIN_OOD_CLASSES:
            raise ValueError(f"ood_wnids must name at least {MIN_OOD_CLASSES} classes (with one, "
                             "every retrieved image is relevant: mAP is 100% whatever the codes)")
        if self.max_classes is not None and self.max_classes <= n_ood:
            raise ValueError(f"max_classes ({self.max_classes}) must leave in-domain classes "
                             f"beside the {n_ood} ood classes")
        return self


@dataclass(config=_STRICT)
class ModelConfig:
    """The modified Babenko et al. ConvNet (assignment Task 1). Widths are the paper's."""

    conv_widths: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt, PositiveInt] = (
        96, 192, 288, 288, 256)
    fc_width: PositiveInt = 2048  # layers 6 and 7 (the paper: 4096)
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.5  # before layers 6 and 7
    batch_norm: bool = False  # an "improved" technique, off in the assignment protocol


@dataclass(config=_STRICT)
class TrainConfig:
    """The training protocol (assignment Task 2)."""

    lr: Annotated[float, Field(gt=0)] = 1e-4
    amsgrad: bool = True
    adam_eps: Annotated[float, Field(gt=0)] = 1e-7  # Keras' Adam default (torch's is 1e-8)
    batch_size: PositiveInt = 100
    max_epochs: Annotated[int, Field(ge=1, strict=True), RESUMABLE] = 100
    # stop at the first epoch whose val loss is above the best so far
    patience: Annotated[int, Field(ge=0, strict=True), RESUMABLE] = 0
    # keep the best epoch's weights; false keeps the last epoch's, as the course's solution did
    restore_best: bool = True
    seed: Annotated[int, Field(ge=0, strict=True)] = 42
    augment: bool = False  # random crops and flips: an "improved" technique
    # auto | cpu | cuda | cuda:N | mps
    device: Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$"), RESUMABLE] = "auto"
    precision: Annotated[Precision, RESUMABLE] = "fp32"
    compile: Annotated[bool, RESUMABLE] = False
    channels_last: Annotated[bool, RESUMABLE] = True
    # fp32 CPU kernels of conv2-conv5: auto (each layer's faster kernel, measured once on this
    # CPU and cached: kernels/choice.py) | nnpack | onednn (forced)
    cpu_conv: Annotated[CpuConv, RESUMABLE] = "auto"
    threads: Annotated[PositiveInt | None, RESUMABLE] = None  # torch intra-op threads


@dataclass(config=_STRICT)
class RetrievalConfig:
    """Neural-code retrieval (assignment Task 3)."""

    # codes to study and search by: names of code features (neuralcodes.features,
    # read when validating, so a registered feature is accepted); default the paper's 5, 6, 7
    layers: tuple[str, ...] = dataclasses.field(default_factory=features.paper_codes)
    relu: bool = False  # False: pre-ReLU codes, as the course's reference solution used
    k: PositiveInt = 5  # results shown per query
    figure_queries: PositiveInt = 10  # "the first 10 images in the ood set"
    pca_dims: tuple[PositiveInt, ...] = (16, 32, 64, 128, 256)
    # the methods study beyond the paper (retrieval/methods/): true (every family), false (not
    # run), or a list of its families (the paper's codes are always its reference rows)
    methods: Annotated[Annotated[bool, Field(strict=True)] | tuple[Literal[METHOD_FAMILIES], ...],
                       RESUMABLE] = True

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        known = features.code_names()
        bad = [x for x in v if x not in known]
        if bad:
            raise ValueError(f"Input should be {_choices(known)} (got {bad[0]!r})")
        if not v or len(set(v)) != len(v):
            raise ValueError(f"layers must be distinct and among {known}, got {v}")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: bool | tuple[str, ...]) -> bool | tuple[str, ...]:
        if isinstance(v, tuple) and len(set(v)) != len(v):
            raise ValueError(f"methods must be true, false or distinct families among "
                             f"{METHOD_FAMILIES}, got {list(v)}")
        return v

    def method_families(self) -> tuple[str, ...]:
        """The families of the methods study this config runs (none: it is off)."""
        if self.methods is True:
            return METHOD_FAMILIES
        return tuple(f for f in METHOD_FAMILIES if self.methods and f in self.methods)


Seconds = Annotated[float, Field(gt=0, le=3600)]


@dataclass(config=_STRICT)
class ServeConfig:
    """``neuralcodes serve``'s limits and exposure (none of them changes a result, so all may
    change freely: README "The web app" explains each)."""

    max_upload_mb: Annotated[float, Field(gt=0, le=1024), RESUMABLE] = DEFAULT_MAX_UPLOAD_MB
    max_megapixels: Annotated[float, Field(gt=0, le=10_000), RESUMABLE] = DEFAULT_MAX_MEGAPIXELS
    # a JPEG with more scans is refused before decoding (real ones have 1 to about 15)
    max_jpeg_scans: Annotated[int, Field(ge=1, le=100_000, strict=True), RESUMABLE] = 300
    # decoder processes (= decodes at once); a decode past the time limit is killed
    decode_workers: Annotated[int, Field(ge=1, le=64, strict=True), RESUMABLE] = 2
    decode_timeout_s: Annotated[Seconds, RESUMABLE] = 10.0
    # how long an upload waits for a free decoder before 503 (longer than the time limit, so
    # that uploads which run into the limit cannot by themselves make others fail)
    decode_wait_s: Annotated[Seconds, RESUMABLE] = 15.0
    # request bytes held at once over all connections (spooled to temporary files); beyond
    # it a request gets 503 with Retry-After at once
    inflight_mb: Annotated[float, Field(gt=0, le=1 << 20), RESUMABLE] = 256.0
    header_timeout_s: Annotated[Seconds, RESUMABLE] = 10.0  # to send a request's headers
    body_timeout_s: Annotated[Seconds, RESUMABLE] = 10.0  # the longest pause within a body
    keep_alive_s: Annotated[Seconds, RESUMABLE] = 5.0  # an idle connection is closed after
    # host names the app answers to besides the local ones (needed with a non-loopback --host)
    allowed_hosts: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z0-9.:\[\]*-]+$")]],
                             RESUMABLE] = dataclasses.field(default_factory=list)

    @model_validator(mode="after")
    def _waits(self) -> ServeConfig:
        if self.decode_wait_s <= self.decode_timeout_s:
            raise ValueError(f"serve.decode_wait_s ({self.decode_wait_s:g}) must be longer "
                             f"than serve.decode_timeout_s ({self.decode_timeout_s:g})")
        if self.inflight_mb < self.max_upload_mb:
            raise ValueError(f"serve.inflight_mb ({self.inflight_mb:g}) must hold at least one "
                             f"upload (serve.max_upload_mb = {self.max_upload_mb:g})")
        return self


@dataclass(config=_STRICT)
class Config:
    """Everything that defines a run."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    retrieval: RetrievalConfig = dataclasses.field(default_factory=RetrievalConfig)
    serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        d, r = self.data, self.retrieval
        n_ood = len(d.ood_wnids) if d.ood_wnids else d.ood_classes
        # images per class: the dataset's own count (auto: Tiny ImageNet's); where the dataset
        # has none (a labelled folder), the ood database is checked on the data (pipeline.py)
        per_class = d.max_per_class or registry.get(d.dataset).images_per_class
        if per_class is None:
            return self
        database = n_ood * per_class - 1
        if r.k > database:
            raise ValueError(f"retrieval.k ({r.k}) exceeds the ood database ({database} images)")
        if r.figure_queries > database + 1:
            raise ValueError(f"retrieval.figure_queries ({r.figure_queries}) exceeds the "
                             f"{database + 1} ood images")
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build and validate a Config from :meth:`to_dict`-shaped data (missing keys default)."""
        try:
            return _ADAPTER.validate_python(d)
        except pydantic.ValidationError as e:
            raise NeuralCodesError(_describe(e)) from None

    def differences(self, other: Config, *, ignore_resumable: bool = True) -> list[str]:
        """``section.key: old -> new`` for each setting where ``other`` differs from this one."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{s}.{k}: {a[s][k]!r} -> {b[s][k]!r}"
                for s in a for k in a[s]
                if a[s][k] != b[s][k] and not (ignore_resumable and (s, k) in resumable_settings())]


_ADAPTER = TypeAdapter(Config)


def resumable_settings() -> frozenset[tuple[str, str]]:
    """``(section, key)`` of every field marked :data:`RESUMABLE`."""
    found = set()
    for section in dataclasses.fields(Config):
        hints = typing.get_type_hints(section.default_factory, include_extras=True)
        for key, hint in hints.items():
            if any(m is RESUMABLE for m in getattr(hint, "__metadata__", ())):
                found.add((section.name, key))
    return frozenset(found)


def describe_resumable() -> str:
    """The resumable settings for a message: ``section.*`` for a section that is all
    resumable, else ``section.key`` one by one."""
    found = resumable_settings()
    parts = []
    for section in dataclasses.fields(Config):
        keys = [f.name for f in dataclasses.fields(section.default_factory)]
        if all((section.name, k) in found for k in keys):
            parts.append(f"{section.name}.*")
        else:
            parts += [f"{section.name}.{k}" for k in keys if (section.name, k) in found]
    return ", ".join(parts)


def _choices(names: tuple[str, ...]) -> str:
    """``'5', '6' or '7'``, as pydantic words a choice."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _describe(e: pydantic.ValidationError) -> str:
    """One line naming each bad setting, e.g. ``train.lr: Input should be greater than 0``."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        msg = err["msg"].removeprefix("Value error, ")
        unknown = err["type"] in ("extra_forbidden", "unexpected_keyword_argument")
        if unknown:
            msg = "unknown setting"
        got = "" if unknown or err["type"] == "value_error" else f" (got {err.get('input')!r})"
        parts.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
    return "invalid setting " + "; ".join(dict.fromkeys(parts))


def parse_override(assignment: str) -> tuple[str, str, Any]:
    """``SECTION.KEY=VALUE`` -> (section, key, value); VALUE is JSON if it parses, else a string.

    Examples: ``train.lr=3e-4``, ``model.conv_widths=[8,8,8,8,8]``, ``data.ood_wnids=["n1","n2"]``.
    """
    key, sep, raw = assignment.partition("=")
    section, _, name = key.strip().partition(".")
    sections = [f.name for f in dataclasses.fields(Config)]
    if not sep:
        raise NeuralCodesError(f"--set {assignment!r}: missing '=VALUE' (expected "
                               "SECTION.KEY=VALUE)")
    if section not in sections or not re.fullmatch(r"\w+", name):
        raise NeuralCodesError(f"--set {assignment!r}: expected SECTION.KEY=VALUE with SECTION one "
                               f"of {sections}")
    section_cls = next(f.default_factory for f in dataclasses.fields(Config) if f.name == section)
    if name not in {f.name for f in dataclasses.fields(section_cls)}:
        raise NeuralCodesError(f"--set {assignment!r}: '{section}' has no setting '{name}'")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return section, name, value


def apply_overrides(d: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """A copy of the config dict ``d`` with each ``SECTION.KEY=VALUE`` applied (not validated)."""
    out = {k: dict(v) for k, v in d.items()}
    for item in assignments:
        section, name, value = parse_override(item)
        out.setdefault(section, {})[name] = value
    return out


def apply_override(cfg: Config, assignment: str) -> Config:
    """``cfg`` with one ``SECTION.KEY=VALUE`` applied and the whole config validated again."""
    return Config.from_dict(apply_overrides(cfg.to_dict(), [assignment]))
