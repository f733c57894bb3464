"""A run directory ``runs/<name>/``: :class:`RunDir` names every artifact, :class:`TrainedRun`
is a trained run loaded for use (config, model, data).

    config.json            every setting, data facts, versions
    splits.csv             the partition: split, position, file name, wnid
    checkpoints/last.pt    model, optimizer, epoch, RNG and early-stopping state
    checkpoints/best.pt    the kept weights: the best epoch's (or the last's: train.restore_best)
    metrics.jsonl          one line per epoch
    train_state.json       best and stopped epoch, whether training finished
    timings.json           `run`: each stage's estimated and measured seconds
    train.log              the training log
    curves.png             learning curves
    eval.json, eval.csv    cross-entropy, top-1, top-5 on train/val/test
    codes/<split>-<pre|post>relu.npz   unit-length neural codes per layer
    retrieval/             figures (top{k}*), mAP, PCA study, layer evidence, methods.*
    indexes/<name>/        `neuralcodes index`: the codes of a folder of your images
    indexes/transform-<pre|post>relu-<precision>.npz   what their codes are centred/reduced by
    report.md, report.html
    .lock                  held (flock) by the one process writing the run; names it
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuralcodes.config import Config
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json, remove_stale_temps

if TYPE_CHECKING:
    import torch

    from neuralcodes.data import Dataset, Splits
    from neuralcodes.model import ConvNet

CHECKPOINTS: tuple[str, ...] = ("best", "last")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunDir:
    """Paths of one run's artifacts: the only place that spells their names."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        """A run directory that must already hold a ``config.json``."""
        run = cls(Path(path))
        if not run.config.is_file():
            raise NeuralCodesError(f"{path}: not a run directory (no config.json); "
                                   "train one with `neuralcodes train`")
        return run

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """Hold the run's exclusive write lock for the block (one writer per run directory).

        A second writer gets a one-line error naming the holder. The lock is an ``flock`` on
        ``.lock``, released by the kernel when its process dies, so a lock left by a killed
        process is simply taken over; temporary files that process left are removed then.
        """
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
                raise NeuralCodesError(f"{self.root} is in use by another neuralcodes process "
                                       f"({holder}); wait for it to finish or stop it") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()}, `{command}` since "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode(), 0)
            for p in remove_stale_temps(self.root):
                log.warning(f"removed {p.name}, left by an interrupted write")
            yield
            os.ftruncate(fd, 0)
        finally:
            if created and [p.name for p in self.root.iterdir()] == [self.lock_file.name]:
                # nothing was written (a bad --data, say): leave no empty run directory behind
                with contextlib.suppress(OSError):
                    self.lock_file.unlink()
                    self.root.rmdir()
            os.close(fd)  # closing releases the flock

    def saved(self, *, data: bool = True) -> dict[str, Any]:
        """The parsed ``config.json`` (settings, data facts, versions); one line if it is bad.
        ``data=False`` checks only the settings (the data facts are not needed)."""
        saved = read_json(self.config)
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise NeuralCodesError(f"{self.config}: not a neuralcodes run config")
        facts = saved.get("data")
        if data and not (isinstance(facts, dict) and all(
                isinstance(facts.get(k), str) for k in ("cache", "splits_hash"))):
            raise NeuralCodesError(f"{self.config}: damaged run config (its data facts, cache "
                                   "and splits_hash, are missing); train the run again")
        return saved

    def read_config(self) -> Config:
        """The run's validated :class:`Config`."""
        return Config.from_dict(self.saved(data=False)["config"])

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def splits_csv(self) -> Path:
        return self.root / "splits.csv"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, which: str) -> Path:
        """``best`` or ``last``."""
        if which not in CHECKPOINTS:
            raise NeuralCodesError(f"unknown checkpoint '{which}' (choose best or last)")
        return self.checkpoints / f"{which}.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint("last")

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint("best")

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def train_state(self) -> Path:
        return self.root / "train_state.json"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def eval_json(self) -> Path:
        return self.root / "eval.json"

    @property
    def eval_csv(self) -> Path:
        return self.root / "eval.csv"

    def codes(self, split: str = "ood", relu: bool = False) -> Path:
        return self.root / "codes" / f"{split}-{'post' if relu else 'pre'}relu.npz"

    @property
    def retrieval(self) -> Path:
        return self.root / "retrieval"

    @property
    def map_json(self) -> Path:
        return self.retrieval / "map.json"

    def top_json(self, k: int) -> Path:
        """The first queries' top ``k`` per layer (the figures' data)."""
        return self.retrieval / f"top{k}.json"

    def top_figure(self, k: int, layer: str | None = None) -> Path:
        """The top-``k`` figure of one layer, or of all layers side by side (``layer=None``)."""
        return self.retrieval / (f"top{k}_layer{layer}.png" if layer else f"top{k}_layers.png")

    @property
    def evidence_json(self) -> Path:
        return self.retrieval / "evidence.json"

    @property
    def pca_json(self) -> Path:
        return self.retrieval / "pca.json"

    @property
    def pca_plot(self) -> Path:
        return self.retrieval / "pca.png"

    def methods_file(self, kind: str = "json") -> Path:  # the methods study: json or png
        return self.retrieval / f"methods.{kind}"

    @property
    def indexes(self) -> Path:
        """The folder of the run's indexes of the user's images."""
        return self.root / "indexes"

    def index_transform(self, relu: bool, precision: str) -> Path:
        """The codes' transform (centring, layer-5 PCA, fitted on training codes) that the run's
        indexes of one ReLU variant and precision share."""
        return self.indexes / f"transform-{'post' if relu else 'pre'}relu-{precision}.npz"

    def index(self, name: str) -> Path:
        """Where ``neuralcodes index`` keeps the index ``name`` of a folder of the user's images
        (a folder: :mod:`neuralcodes.retrieval.collection` names the files inside)."""
        return self.indexes / name

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"


def check_same_splits(rd: RunDir, saved: dict[str, Any], splits_hash: str) -> None:
    """Refuse data whose partition is not the one the run was trained on."""
    if splits_hash != saved["data"]["splits_hash"]:
        raise NeuralCodesError(
            f"the data splits differ from those {rd.root} was trained on (the data, its cache or "
            "the split settings changed, or neuralcodes < 0.2 made the run, before it used the "
            "course's exact partition); train it again into a new --out")


@dataclass
class TrainedRun:
    """A trained run, opened once per command and passed to its stages: the run directory and
    its resolved config (device and precision are ``config.train``'s: one source of truth),
    then, each loaded on first use and at most once, the model (rebuilt from the checkpoint
    alone), its classes, and the dataset and splits (read from the run's image cache).

    ``reader``: opened by a command that holds no write lock (search, serve); codes it must
    recompute are written under the run's lock, or refused where it may not write.
    ``batch_size``: the inference batch the model's kernels are chosen for (None: the default).
    """

    dir: RunDir
    config: Config
    saved: dict[str, Any]
    checkpoint: str = "best"
    progress: bool = True
    reader: bool = False
    batch_size: int | None = None
    _model: ConvNet | None = field(default=None, repr=False)
    _meta: dict[str, Any] | None = field(default=None, repr=False)
    _epoch: int = field(default=0, repr=False)
    _data: tuple[Dataset, Splits] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path, config: Config | None = None, *, device: str | None = None,
             precision: str | None = None, checkpoint: str = "best", progress: bool = True,
             reader: bool = False, batch_size: int | None = None) -> TrainedRun:
        """Open the run at ``path`` (nothing heavy is loaded yet). ``config``: the run's
        config with the command's settings applied (default: the saved one); ``device`` /
        ``precision`` given: they replace the config's ``train`` ones."""
        rd = RunDir.existing(path)
        saved = rd.saved()
        cfg = config if config is not None else Config.from_dict(saved["config"])
        if device is not None or precision is not None:
            d = cfg.to_dict()
            d["train"].update({k: v for k, v in (("device", device), ("precision", precision))
                               if v is not None})
            cfg = Config.from_dict(d)
        rd.checkpoint(checkpoint)  # an unknown name: one line, now
        return cls(rd, cfg, saved, checkpoint, progress, reader, batch_size)

    @classmethod
    def load(cls, path: str | Path, *, checkpoint: str = "best", device: str = "auto",
             batch_size: int | None = None, precision: str | None = None) -> TrainedRun:
        """:meth:`open` with its model loaded at once."""
        run = cls.open(path, device=device, precision=precision, checkpoint=checkpoint,
                       batch_size=batch_size)
        run.model  # noqa: B018 (loads it)
        return run

    @property
    def precision(self) -> str:
        return self.config.train.precision

    @property
    def device(self) -> torch.device:
        from neuralcodes.runtime import resolve_device

        return resolve_device(self.config.train.device)

    @property
    def model(self) -> ConvNet:
        """The network in eval mode, rebuilt from the checkpoint (loaded on first use)."""
        if self._model is None:
            self._load_model()
        assert self._model is not None
        return self._model

    def release_model(self) -> None:
        """Drop the loaded network (its memory goes back); the next use loads it again."""
        self._model = None

    @property
    def epoch(self) -> int:
        self.model  # noqa: B018
        return self._epoch

    @property
    def meta(self) -> dict[str, Any]:
        """What the checkpoint records of its network: name, args, classes (see
        :func:`neuralcodes.model.checkpoint_meta`; ``classes`` None for an older checkpoint)."""
        self.model  # noqa: B018
        assert self._meta is not None
        return self._meta

    def _load_model(self) -> None:
        from neuralcodes.model.build import build_model
        from neuralcodes.model.checkpoint import load_checkpoint, network_meta

        path = self.dir.checkpoint(self.checkpoint)
        ckpt = load_checkpoint(path)
        meta = network_meta(ckpt, self.config, path)
        try:
            model = build_model(self.config, meta["num_classes"], self.device,
                                weights=ckpt["model"], inference=True,
                                batch_size=self.batch_size, spec=(meta["name"], meta["args"]))
        except (KeyError, RuntimeError) as e:
            raise NeuralCodesError(f"{path}: weights do not fit this run's model "
                                   f"({str(e).splitlines()[0]})") from None
        self._model, self._meta, self._epoch = model, meta, int(ckpt.get("epoch", 0))

    @property
    def dataset(self) -> Dataset:
        """The dataset (from the run's image cache), without loading the model."""
        return self._load_data()[0]

    @property
    def splits(self) -> Splits:
        return self._load_data()[1]

    def _load_data(self) -> tuple[Dataset, Splits]:
        self._data = self._data or load_run_data(self.dir, self.saved)
        return self._data

    def relu(self, relu: bool | None = None) -> bool:
        """``relu``, or the run's default codes (``retrieval.relu``) when None."""
        return self.config.retrieval.relu if relu is None else bool(relu)

    def images(self, index: Any) -> Any:
        """The dataset images at ``index`` (in that order), read in ascending order."""
        import numpy as np

        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index)
        images = self.dataset.images
        out = np.empty((len(index), *images.shape[1:]), dtype=images.dtype)
        out[order] = images[index[order]]
        return out

    def class_names(self, labels: Any) -> list[str]:
        """Class names of dataset labels ("" for -1)."""
        return [self.dataset.names[int(i)] if i >= 0 else "" for i in labels]


def load_run_data(rd: RunDir, saved: dict[str, Any] | None = None) -> tuple[Dataset, Splits]:
    """The dataset and splits the run at ``rd`` was trained on, from its recorded image cache.

    Reads only: nothing is downloaded or prepared here (only ``prepare``, ``train`` and ``run``
    do that). A missing cache ends in one line naming it and the ``neuralcodes prepare``
    command that restores it; splits that differ from the run's are refused in one line.
    """
    from neuralcodes.data import Dataset, make_splits
    from neuralcodes.data.cache import prepare_command

    saved = saved if saved is not None else rd.saved()
    data = Config.from_dict(saved["config"]).data
    cache = Path(saved["data"]["cache"])
    if not (cache / "manifest.json").is_file():
        raise NeuralCodesError(f"{rd.root}: its image cache {cache} is missing; restore it with "
                               f"`{prepare_command(saved, cache)}`")
    dataset = Dataset.load(cache)
    splits = make_splits(dataset, data)
    check_same_splits(rd, saved, splits.hash)
    return dataset, splits
