"""What training keeps in the run directory, and reads back: the :class:`Session` of one
:func:`~neuralcodes.training.loop.train` call writes ``last.pt``/``best.pt``, ``metrics.jsonl``,
``curves.png`` and ``train_state.json``; :func:`run_record` is ``config.json``;
:func:`is_finished` and :func:`training_left` read the state back."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuralcodes.config import Config
from neuralcodes.course import course_reference
from neuralcodes.data import Dataset, Splits
from neuralcodes.files import read_json, write_json, write_text
from neuralcodes.kernels.choice import kernel_choice
from neuralcodes.model import ConvNet, count_parameters
from neuralcodes.model.checkpoint import CHECKPOINT_FORMAT, rng_state, save_checkpoint
from neuralcodes.runs import RunDir
from neuralcodes.training.distributed import Dist
from neuralcodes.training.early_stopping import EarlyStopping
from neuralcodes.versions import versions

#: Learning curves are redrawn after an epoch if this long has passed since the last drawing (and
#: always at the end): every epoch of a real run, without slowing down tiny test runs.
PLOT_INTERVAL_S = 20.0


@dataclass
class Session:
    """Everything one call of :func:`~neuralcodes.training.loop.train` works with."""

    cfg: Config
    run: RunDir
    dist: Dist
    device: torch.device
    model: ConvNet
    net: torch.nn.Module  # what the step calls: model, maybe DDP-wrapped and compiled
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    stopping: EarlyStopping
    rows: list[dict[str, Any]]
    progress: bool
    on_step: Callable[[int, int], None] | None
    interrupt: dict[str, bool]
    plotted: float = -math.inf  # time.monotonic() of the last learning-curve plot
    course_data: bool = True  # trained on the course's dataset: its curves may be drawn beside
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # rebuilds the network

    @property
    def kept(self) -> str:
        """Which weights ``best.pt`` holds: ``best`` or ``last`` (``train.restore_best``)."""
        return "best" if self.cfg.train.restore_best else "last"

    def save_last(self, epoch: int, step: int, partial: torch.Tensor) -> None:
        """Write last.pt (a collective call: every rank must call it)."""
        per_rank = self.dist.gather({"rng": rng_state(self.device), "partial": partial.cpu()})
        if self.dist.main:
            save_checkpoint(self.run.last_checkpoint, {
                "format": CHECKPOINT_FORMAT, "meta": self.meta, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": epoch, "step": step, "world_size": self.dist.world, "ranks": per_rank,
                "early_stopping": dataclasses.asdict(self.stopping), "metrics": list(self.rows)})

    def save_kept(self, epoch: int, val_loss: float) -> None:
        """Write best.pt: the weights the run keeps (rank 0)."""
        save_checkpoint(self.run.best_checkpoint, {
            "format": CHECKPOINT_FORMAT, "meta": self.meta, "model": self.model.state_dict(),
            "epoch": epoch, "val_loss": val_loss, "kept": self.kept})

    def write_progress(self, finished: bool) -> None:
        """metrics.jsonl, curves.png and train_state.json, rewritten atomically each epoch."""
        from neuralcodes.figures import plot_learning_curves  # matplotlib: only when drawing

        write_text(self.run.metrics, "".join(json.dumps(r) + "\n" for r in self.rows))
        now = time.monotonic()
        if finished or now - self.plotted >= PLOT_INTERVAL_S:  # every epoch of a real run
            # the course's curves only beside a run of its dataset with as many classes: a loss
            # of 15 classes and one of 190 are not on the same scale
            ref = course_reference()
            same = self.course_data and self.model.num_classes == ref["num_classes"]
            plot_learning_curves(self.rows, self.run.curves,
                                 reference=ref["epochs"] if same else None)
            self.plotted = now
        es = self.stopping
        write_json(self.run.train_state, {
            "epochs_completed": self.rows[-1]["epoch"] if self.rows else 0,
            "best_epoch": es.best_epoch, "best_val_loss": es.best_loss,
            "stopped_epoch": es.stopped_epoch, "stopped_early": es.stopped_epoch is not None,
            "patience": es.patience, "kept": self.kept, "finished": finished,
            "device": str(self.device),
        })


def run_record(cfg: Config, dataset: Dataset, splits: Splits, model: ConvNet, dist: Dist,
               changes: list[dict[str, Any]]) -> dict[str, Any]:
    """``config.json``: every setting, the data, the model, the kernels, the processes, the
    versions and the changes made on resume."""
    return {
        "config": cfg.to_dict(),
        "data": data_facts(dataset, splits),
        "model": {"parameters": count_parameters(model)},
        "kernels": kernel_facts(model),
        "distributed": {"world_size": dist.world, "backend": dist.backend},
        "versions": versions(),
    } | ({"changes": changes} if changes else {})


def kernel_facts(model: torch.nn.Module) -> dict[str, Any] | None:
    """What config.json records about the CPU convolution kernels the run trains with."""
    choice = kernel_choice(model)
    return choice.to_dict() if choice is not None else None


def data_facts(dataset: Dataset, splits: Splits) -> dict[str, Any]:
    """What config.json records about the data: cache, checksums, split sizes, classes."""
    source = dataset.manifest.get("source", {})
    return {
        "dataset": dataset.spec.name,
        "cache": str(Path(dataset.root).resolve()), "manifest_hash": dataset.manifest_hash,
        "source": source.get("path"), "source_checksum": source.get("checksum"),
        "splits_hash": splits.hash,
        "sizes": {s: len(getattr(splits, s)) for s in ("train", "val", "test", "ood")},
        "num_classes": len(splits.in_classes),
        "ood_classes": [{"wnid": dataset.wnids[c], "name": dataset.names[c]}
                        for c in splits.ood_classes],
    }


def is_finished(run: str | Path) -> bool:
    """True when ``run`` holds a training run that ended (early-stopped or at the epoch limit)."""
    path = RunDir(Path(run)).train_state
    return path.is_file() and bool(read_json(path).get("finished"))


def training_left(run: str | Path, max_epochs: int, patience: int | None = None
                  ) -> tuple[bool, str]:
    """Whether ``run`` has training left to do at an epoch limit of ``max_epochs``, and the
    line that says so: a finished run trains on when the limit was raised, unless early
    stopping ended it and ``patience`` is not higher than it was (then the line says how to
    go on)."""
    rd = RunDir(Path(run))
    if not is_finished(rd.root):
        return True, ""
    state = read_json(rd.train_state)
    done = int(state.get("epochs_completed") or 0)
    if done >= max_epochs:
        return False, f"skipped: {rd.root} already holds a finished training run ({done} epochs)"
    if state.get("stopped_early") and (patience is None
                                       or patience <= int(state.get("patience") or 0)):
        return False, early_stopped_line(rd, state.get("stopped_epoch"), state.get("patience"),
                                         max_epochs)
    return True, f"{rd.root} trained {done} epochs; the limit is now {max_epochs}: training on"


def early_stopped_line(rd: RunDir, stopped: Any, patience: Any, max_epochs: int) -> str:
    """The line for a run early stopping ended before ``max_epochs``: how to train on."""
    return (f"not training on: early stopping ended {rd.root} at epoch {stopped} (patience "
            f"{patience}); to train on to {max_epochs} epochs anyway, raise the patience: "
            f"`neuralcodes train --resume {rd.root} --epochs {max_epochs} --set "
            f"train.patience={int(patience or 0) + 1}`")
