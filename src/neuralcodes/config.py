"""One configuration object holding the assignment's defaults; saved with every run.

Every field can be overridden from the command line (see ``neuralcodes train --help``) and the
whole object is written to ``runs/<name>/config.json``, so a run can always be reproduced.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from neuralcodes.errors import NeuralCodesError


@dataclass
class DataConfig:
    """Where the images come from and how they are split (assignment: "Data")."""

    source: str | None = None  # archive, folder, or None: download the official archive
    cache_dir: str | None = None  # None: $NEURALCODES_CACHE or ~/.cache/neuralcodes
    ood_classes: int = 10  # the last N classes in sorted wnid order are out-of-domain
    ood_wnids: list[str] | None = None  # explicit out-of-domain wnids (overrides ood_classes)
    ood_random: bool = False  # draw the ood classes at random with `seed` instead of the last N
    seed: int = 42  # shuffles the in-domain images before the 80/10/10 cut
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test
    max_classes: int | None = None  # use only the first N classes (quick runs)
    max_per_class: int | None = None  # use only the first N images of each class (quick runs)


@dataclass
class ModelConfig:
    """The modified Babenko et al. ConvNet (assignment Task 1). Widths are the paper's."""

    conv_widths: tuple[int, int, int, int, int] = (96, 192, 288, 288, 256)
    fc_width: int = 2048  # layers 6 and 7 (the paper: 4096)
    dropout: float = 0.5  # before layers 6 and 7
    batch_norm: bool = False  # an "improved" technique, off in the assignment protocol


@dataclass
class TrainConfig:
    """The training protocol (assignment Task 2)."""

    lr: float = 1e-4
    amsgrad: bool = True
    batch_size: int = 100
    max_epochs: int = 100
    patience: int = 0  # stop at the first epoch whose val loss is above the best so far
    seed: int = 42
    augment: bool = False  # random crops and flips: an "improved" technique
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "fp32"  # fp32 | bf16 | fp16
    compile: bool = False
    channels_last: bool = True
    cpu_conv: str = "auto"  # auto | nnpack | onednn: fp32 CPU kernels of conv2-conv5
    threads: int | None = None  # torch intra-op threads; None: torch's default


@dataclass
class RetrievalConfig:
    """Neural-code retrieval (assignment Task 3)."""

    layers: tuple[str, ...] = ("5", "6", "7")
    relu: bool = False  # False: pre-ReLU codes, as the course's reference solution used
    k: int = 5  # results shown per query
    figure_queries: int = 10  # "the first 10 images in the ood set"
    pca_dims: tuple[int, ...] = (16, 32, 64, 128, 256)


@dataclass
class Config:
    """Everything that defines a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Rebuild a Config from :meth:`to_dict` output; unknown keys are an error."""
        sections = {}
        for f in dataclasses.fields(cls):
            section_cls = type(getattr(cls(), f.name))
            sections[f.name] = _build(section_cls, d.get(f.name, {}), f.name)
        return cls(**sections)


def _build(section_cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise NeuralCodesError(f"unknown setting(s) in config section '{where}': {sorted(unknown)}")
    default = section_cls()
    kwargs = {}
    for name, value in values.items():
        if isinstance(getattr(default, name), tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return section_cls(**kwargs)


def apply_override(cfg: Config, assignment: str) -> None:
    """Apply one ``section.key=value`` override (``value`` parsed as JSON, else as a string).

    Examples: ``train.lr=3e-4``, ``model.conv_widths=[8,8,8,8,8]``, ``data.ood_wnids=["n1"]``.
    """
    key, sep, raw = assignment.partition("=")
    section_name, _, name = key.strip().partition(".")
    section = getattr(cfg, section_name, None)
    if not sep or section is None or not dataclasses.is_dataclass(section) or not name:
        raise NeuralCodesError(f"--set {assignment!r}: expected SECTION.KEY=VALUE with SECTION one "
                               f"of {[f.name for f in dataclasses.fields(cfg)]}")
    if name not in {f.name for f in dataclasses.fields(section)}:
        raise NeuralCodesError(f"--set {assignment!r}: '{section_name}' has no setting '{name}'")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    current = getattr(section, name)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and value is not None and type(value) is not type(current):
        raise NeuralCodesError(f"--set {assignment!r}: expected a {type(current).__name__}")
    setattr(section, name, value)
