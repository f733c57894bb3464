"""Training the ConvNet (assignment Task 2): :func:`train` and its epoch loop.

The defaults are the assignment's protocol: cross-entropy, Adam (lr 1e-4, amsgrad), batches of
100 reshuffled every epoch with a fixed seed, at most 100 epochs, and early stopping on the
validation loss: training stops at the first epoch whose validation loss is not below the best so
far (patience 0). ``checkpoints/best.pt`` holds the weights the run keeps: the best epoch's
(``train.restore_best``, the default) or, as the course's reference solution did, the last
epoch's (``restore_best=false``); ``train_state.json`` records which (``"kept"``).

Keras semantics (the course's reference is a Keras model) and where this differs:

=====================================  ===================================================
Keras default                          here
=====================================  ===================================================
Glorot-uniform weights, zero biases    the same (``ConvNet.reset_parameters``)
'same' padding, extra row bottom/right the same (``model/layers.py``), also for the pools
Dropout(0.5): inverted, off at test    the same (``nn.Dropout``)
Adam beta1 0.9, beta2 0.999            the same (torch's defaults)
Adam epsilon 1e-7                      the same (``train.adam_eps``; torch's default is 1e-8).
                                       Keras adds it to the uncorrected sqrt(v) ("epsilon
                                       hat"), torch to the bias-corrected one: Keras' update
                                       equals torch's with eps / sqrt(1 - 0.999^t): over
                                       25% larger only in the first ~1,000 steps. Not matched.
amsgrad=True (the course's choice)     the same (``train.amsgrad``): max of v, as Keras
fit(shuffle=True): reshuffle per epoch the same, seeded; the last partial batch is kept too
categorical cross-entropy, batch mean  the same; Keras' softmax output clips probabilities
                                       at 1e-7 (loss at most 16.1 per image), we do not
val loss in inference mode             the same (eval mode: no dropout, BN running stats)
EarlyStopping(patience=0, min_delta=0) the same: a tie is no improvement
restore_best_weights=False             ``train.restore_best=false``; true by default here
BatchNormalization (improved only)     not matched: torch's momentum 0.1 / eps 1e-5 (Keras
                                       0.99 / 1e-3), outside the assignment protocol
=====================================  ===================================================

Resuming: ``checkpoints/last.pt`` holds the model, the optimizer, the grad scaler, the
early-stopping state, every RNG state (per rank) and, when training was interrupted, the position
inside the epoch. The batch order of an epoch is a pure function of ``(seed, epoch)``, so a resumed
run on the CPU in fp32 ends with exactly the weights of an uninterrupted one.

Distributed: under ``torchrun`` the same code trains with DistributedDataParallel (gloo on CPU,
nccl on CUDA; also with one process). Every rank draws the same global batch order and takes its
share of each global batch, and the loss is scaled so that the averaged gradient is that of the
global batch: the global batch size stays ``batch_size``. Only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralcodes.config import Config
from neuralcodes.course import course_reference
from neuralcodes.data import Dataset, Splits, load_data, write_splits_csv
from neuralcodes.errors import NeuralCodesError
from neuralcodes.evaluation import evaluate_split
from neuralcodes.files import read_json, write_json, write_text
from neuralcodes.kernels.choice import kernel_choice
from neuralcodes.model import ConvNet, count_parameters
from neuralcodes.progress import bar as progress_bar
from neuralcodes.runs import RunDir, check_same_splits
from neuralcodes.runtime import threads
from neuralcodes.training.batches import SplitData, epoch_order
from neuralcodes.training.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from neuralcodes.training.context import interrupt_flag, log_file
from neuralcodes.training.distributed import Dist, device_for
from neuralcodes.training.early_stopping import EarlyStopping
from neuralcodes.training.resume import check_resumable, rewind_to_kept
from neuralcodes.training.step import build_model, make_optimizer, train_step
from neuralcodes.training.throughput import precision_warning
from neuralcodes.versions import versions

log = logging.getLogger(__name__)

#: Learning curves are redrawn after an epoch if this long has passed since the last drawing (and
#: always at the end): every epoch of a real run, without slowing down tiny test runs.
PLOT_INTERVAL_S = 20.0


def train(cfg: Config, out: str | Path, *, resume: bool = False, progress: bool = True,
          on_step: Callable[[int, int], None] | None = None, start_from: str = "last") -> RunDir:
    """Train a ConvNet with ``cfg`` into run directory ``out``; returns the :class:`RunDir`.

    ``resume=True`` continues ``out`` from ``checkpoints/last.pt``; ``cfg`` must then equal the
    saved config except for the settings marked resumable in ``neuralcodes.config``.
    ``on_step(epoch, step)`` is called after every optimizer step (tests use it to simulate a
    Ctrl-C). Ctrl-C saves ``last.pt`` (with the position inside the epoch) and re-raises
    ``KeyboardInterrupt``. Under ``torchrun`` this trains with DistributedDataParallel.

    ``start_from="best"`` (with ``resume``) goes back to the kept weights of ``best.pt`` instead:
    the epochs after it are dropped, Adam starts afresh, and ``train.lr`` may change too (the way
    on after a NaN loss); the change is logged and recorded in config.json under ``changes``.
    """
    device = device_for(cfg.train.device)
    dist = Dist.from_env(device)
    try:
        with interrupt_flag() as flag, threads(cfg.train.threads):
            run = _train(cfg, RunDir(Path(out)), dist, device, resume, progress and dist.main,
                         on_step, flag, start_from)
        # every rank's last messages are delivered before any rank leaves: a gloo rank that
        # exits while its peer still writes aborts ("terminate called without an active exception")
        dist.barrier()
        return run
    finally:
        dist.close()


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


@dataclass
class _Session:
    """Everything one call of :func:`train` works with."""

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

    @property
    def kept(self) -> str:
        """Which weights ``best.pt`` holds: ``best`` or ``last`` (``train.restore_best``)."""
        return "best" if self.cfg.train.restore_best else "last"

    def save_last(self, epoch: int, step: int, partial: torch.Tensor) -> None:
        """Write last.pt (a collective call: every rank must call it)."""
        per_rank = self.dist.gather({"rng": rng_state(self.device), "partial": partial.cpu()})
        if self.dist.main:
            save_checkpoint(self.run.last_checkpoint, {
                "format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": epoch, "step": step, "world_size": self.dist.world, "ranks": per_rank,
                "early_stopping": dataclasses.asdict(self.stopping), "metrics": list(self.rows)})

    def save_kept(self, epoch: int, val_loss: float) -> None:
        """Write best.pt: the weights the run keeps (rank 0)."""
        save_checkpoint(self.run.best_checkpoint, {
            "format": CHECKPOINT_FORMAT, "model": self.model.state_dict(), "epoch": epoch,
            "val_loss": val_loss, "kept": self.kept})


def _train(cfg: Config, run: RunDir, dist: Dist, device: torch.device, resume: bool,
           progress: bool, on_step: Callable[[int, int], None] | None,
           flag: dict[str, bool], start_from: str = "last") -> RunDir:
    t = cfg.train
    if t.batch_size % dist.world:
        raise NeuralCodesError(f"--batch-size {t.batch_size} is not divisible by the "
                               f"{dist.world} processes")
    if start_from not in ("last", "best"):
        raise NeuralCodesError(f"unknown --from '{start_from}' (choose last or best)")
    if start_from == "best" and not resume:
        raise NeuralCodesError("--from best continues a run: use it with --resume RUN")
    checkpoint: dict[str, Any] | None = None
    changes: list[dict[str, Any]] = []
    notes: list[str] = []
    if resume:
        run = RunDir.existing(run.root)
        saved = run.saved()
        changed = check_resumable(Config.from_dict(saved["config"]), cfg, start_from)
        notes = [f"resuming with a changed setting: {d}" for d in changed]
        if start_from == "best":
            notes.append("resuming from the kept weights (best.pt) with a fresh Adam")
        changes = list(saved.get("changes", []))
        if start_from == "best":
            checkpoint = rewind_to_kept(run, t.patience)
            changes.append({"resumed_from": "best", "epoch": checkpoint["epoch"],
                            "changed": changed, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
        else:
            checkpoint = load_checkpoint(run.last_checkpoint)
    elif run.last_checkpoint.exists() or run.best_checkpoint.exists():
        raise NeuralCodesError(f"{run.root} already holds a run; continue it with "
                               f"`neuralcodes train --resume {run.root}` or choose another --name")

    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)  # the same initial weights on every rank

    if not dist.main:
        dist.barrier()  # let rank 0 prepare the cache alone
    dataset, splits = load_data(cfg.data, progress=progress)
    if dist.main:
        dist.barrier()
    num_classes = len(splits.in_classes)
    if num_classes < 2:
        raise NeuralCodesError(f"need at least 2 in-domain classes to train, got {num_classes}")
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise NeuralCodesError("the train or validation split is empty; use more images per class")
    if checkpoint is not None:
        check_same_splits(run, saved, splits.hash)

    if not dist.main:
        dist.barrier()  # rank 0 measures the CPU kernels (once per machine); the others read them
    model = build_model(cfg, num_classes, device)
    if dist.main:
        dist.barrier()
    optimizer = make_optimizer(model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    stopping = EarlyStopping(t.patience)
    rows: list[dict[str, Any]] = []
    start_epoch, start_step, partial = 1, 0, torch.zeros(3, dtype=torch.float64)
    torch.manual_seed(t.seed + dist.rank)  # dropout and augmentation draws differ per rank

    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        if "optimizer" in checkpoint:  # not when rewound to best.pt: Adam starts afresh
            optimizer.load_state_dict(checkpoint["optimizer"])
            scaler.load_state_dict(checkpoint["scaler"])
        stopping = EarlyStopping(**{**checkpoint["early_stopping"], "patience": t.patience,
                                    "stopped_epoch": None})
        if stopping.should_stop:
            stopping.stopped_epoch = checkpoint["early_stopping"]["stopped_epoch"]
        start_epoch, start_step = checkpoint["epoch"] + 1, checkpoint["step"]
        ranks = checkpoint.get("ranks")
        if ranks is None:  # rewound to best.pt: fresh random draws for the epochs after it
            torch.manual_seed(t.seed + dist.rank + 7919 * start_epoch)
        else:
            mine = ranks[dist.rank] if checkpoint["world_size"] == dist.world else ranks[0]
            set_rng_state(mine["rng"], device)
            partial = mine["partial"]
        rows = list(checkpoint["metrics"])  # metrics.jsonl may be ahead of last.pt after a crash

    if dist.main:
        run.root.mkdir(parents=True, exist_ok=True)
        write_json(run.config, {
            "config": cfg.to_dict(),
            "data": _data_facts(dataset, splits),
            "model": {"parameters": count_parameters(model)},
            "kernels": _kernel_facts(model),
            "distributed": {"world_size": dist.world, "backend": dist.backend},
            "versions": versions(),
        } | ({"changes": changes} if changes else {}))
        write_splits_csv(dataset, splits, run.splits_csv)

    net: torch.nn.Module = model
    if dist.backend is not None:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)

    s = _Session(cfg, run, dist, device, model, net, optimizer, scaler, stopping, rows, progress,
                 on_step, flag)
    with log_file(run.log if dist.main else None):
        train_data = SplitData.load(dataset, splits, "train", device)
        val_data = SplitData.load(dataset, splits, "val", device)
        if dist.main:
            for note in notes:
                log.info(note)
            log.info(f"{'resuming' if resume else 'training'} {run.root}: {num_classes} classes, "
                     f"{len(train_data)} train / {len(val_data)} val images, "
                     f"{count_parameters(model):,} parameters, device {device}, {t.precision}"
                     + (f", {dist.world} processes" if dist.world > 1 else ""))
            choice = kernel_choice(model)
            if choice is not None and choice.layers and device.type == "cpu":
                log.info(f"convolution kernels: {choice.describe()}")
            warning = precision_warning(device, t.precision)
            if warning:
                log.warning(f"warning: {warning}")
        if dist.main and stopping.should_stop and start_epoch <= t.max_epochs:
            log.info(early_stopped_line(run, stopping.stopped_epoch, t.patience, t.max_epochs))
        _loop(s, train_data, val_data, start_epoch, start_step, partial)
    return run


def _loop(s: _Session, train_data: SplitData, val_data: SplitData, start_epoch: int,
          start_step: int, partial: torch.Tensor) -> None:
    t = s.cfg.train
    for epoch in range(start_epoch, t.max_epochs + 1):
        if s.stopping.should_stop:
            break
        seconds = time.perf_counter()
        train_loss, train_acc, img_per_s = _train_epoch(s, train_data, epoch, start_step, partial)
        start_step, partial = 0, torch.zeros(3, dtype=torch.float64)
        val = evaluate_split(s.model, val_data, device=s.device, precision=t.precision,
                             channels_last=t.channels_last, progress=s.progress,
                             desc="validation", dist=s.dist)
        improved = s.stopping.update(epoch, val["loss"])
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc,
               "val_loss": val["loss"], "val_acc": val["top1"], "val_top5": val["top5"],
               "seconds": round(time.perf_counter() - seconds, 2), "img_per_s": round(img_per_s, 1)}
        s.rows.append(row)
        if s.dist.main and (improved or not t.restore_best):
            s.save_kept(epoch, val["loss"])
        s.save_last(epoch, 0, partial)
        if s.dist.main:
            _write_progress(s, finished=False)
            log.info(f"epoch {epoch:3d}/{t.max_epochs}  train loss {train_loss:.4f} acc "
                     f"{train_acc:.4f} | val loss {val['loss']:.4f} acc {val['top1']:.4f} "
                     f"top-5 {val['top5']:.4f} | {row['seconds']:.0f} s, {img_per_s:.1f} img/s"
                     + ("  *best*" if improved else ""))
        if s.dist.any(s.interrupt["set"])[0]:
            _interrupted(s, epoch, 0)
    if s.dist.main:
        _write_progress(s, finished=True)
        es = s.stopping
        how = (f"early-stopped at epoch {es.stopped_epoch}" if es.stopped_epoch
               else f"reached the epoch limit ({t.max_epochs})")
        kept = (f"kept in {s.run.best_checkpoint}" if t.restore_best else
                f"the last epoch's weights are kept in {s.run.best_checkpoint} "
                "(train.restore_best=false)")
        log.info(f"done: {how}; best epoch {es.best_epoch} (val loss {es.best_loss:.4f}); {kept}")


def _train_epoch(s: _Session, data: SplitData, epoch: int, start_step: int,
                 partial: torch.Tensor) -> tuple[float, float, float]:
    """One pass over the training images; returns (mean loss, accuracy, img/s)."""
    t, dist = s.cfg.train, s.dist
    order = epoch_order(t.seed, epoch, len(data))
    n_steps = -(-len(data) // t.batch_size)
    sums = partial.to(s.device)  # loss sum, correct, images (this rank)
    s.net.train()
    done = 0
    began = time.perf_counter()
    bar = progress_bar(total=len(data), initial=min(start_step * t.batch_size, len(data)),
                       unit="img", desc=f"epoch {epoch}/{t.max_epochs}",
                       disable=not s.progress, leave=False, dynamic_ncols=True)
    with bar:
        for step in range(start_step, n_steps):
            chunk = order[step * t.batch_size:(step + 1) * t.batch_size]
            mine = torch.from_numpy(np.array_split(chunk, dist.world)[dist.rank]).to(s.device)
            loss_sum, correct = train_step(s.net, s.optimizer, s.scaler, data.images[mine],
                                           data.labels[mine], t, s.device,
                                           dist.world / len(chunk))
            sums += torch.stack([loss_sum.double(), correct.double(),
                                 torch.tensor(float(len(mine)), device=s.device,
                                              dtype=torch.float64)])
            done += len(chunk)
            bar.update(len(chunk))
            nonfinite = not math.isfinite(float(loss_sum))  # every step: stop at the first NaN
            if step % 10 == 9 and step < n_steps - 1 and s.progress:  # the last: see below
                bar.set_postfix({"loss": f"{float(sums[0] / sums[2]):.4f}",
                                 "acc": f"{float(sums[1] / sums[2]):.4f}"}, refresh=False)
            if s.on_step is not None:
                s.on_step(epoch, step)
            stop, nonfinite = dist.any(s.interrupt["set"], nonfinite)
            if nonfinite:
                _non_finite(s, epoch, step)
            if stop and step < n_steps - 1:
                s.save_last(epoch - 1, step + 1, sums)
                _interrupted(s, epoch - 1, step + 1)
        seconds = time.perf_counter() - began
        loss, correct, n = dist.sum(sums.cpu()).tolist()
        # the bar ends on the epoch's own figures (all ranks), those of the summary line
        if s.progress:
            bar.set_postfix({"loss": f"{loss / n:.4f}", "acc": f"{correct / n:.4f}"},
                            refresh=True)  # a dict: loss first, as in the summary line
    return loss / n, correct / n, done / max(seconds, 1e-9)


def _non_finite(s: _Session, epoch: int, step: int) -> None:
    t = s.cfg.train
    es = s.stopping
    last = s.rows[-1]["epoch"] if s.rows else 0
    kept_epoch = es.best_epoch if t.restore_best else last
    lower = f"train.lr={t.lr / 10:g}"
    if kept_epoch:
        way = (f"the {s.kept} weights (epoch {kept_epoch}) are kept in {s.run.best_checkpoint}; "
               f"continue from them with a lower learning rate: `neuralcodes train --resume "
               f"{s.run.root} --from best --set {lower}`")
    else:
        way = (f"no epoch finished, so nothing was kept; start again with a lower learning rate "
               f"(--set {lower}) in a new --out")
    if t.precision != "fp32":
        way += " (or in fp32: --precision fp32)"
    raise NeuralCodesError(f"the training loss became NaN/inf at epoch {epoch}, step {step + 1}; "
                           + way)


def _interrupted(s: _Session, epoch: int, step: int) -> None:
    if s.dist.main:
        where = f"epoch {epoch}" + (f" + {step} steps" if step else "")
        log.info(f"interrupted: saved {s.run.last_checkpoint} after {where}; continue with "
                 f"`neuralcodes train --resume {s.run.root}`")
    raise KeyboardInterrupt


def _write_progress(s: _Session, finished: bool) -> None:
    """metrics.jsonl, curves.png and train_state.json, rewritten atomically each epoch."""
    from neuralcodes.figures import plot_learning_curves  # matplotlib: only when drawing

    write_text(s.run.metrics, "".join(json.dumps(r) + "\n" for r in s.rows))
    now = time.monotonic()
    if finished or now - s.plotted >= PLOT_INTERVAL_S:  # every epoch of a real run
        # the course's curves only beside a run of as many classes: a loss of 15 classes and
        # one of 190 are not on the same scale
        ref = course_reference()
        same = s.model.num_classes == ref["num_classes"]
        plot_learning_curves(s.rows, s.run.curves, reference=ref["epochs"] if same else None)
        s.plotted = now
    es = s.stopping
    write_json(s.run.train_state, {
        "epochs_completed": s.rows[-1]["epoch"] if s.rows else 0,
        "best_epoch": es.best_epoch, "best_val_loss": es.best_loss,
        "stopped_epoch": es.stopped_epoch, "stopped_early": es.stopped_epoch is not None,
        "patience": es.patience, "kept": s.kept, "finished": finished, "device": str(s.device),
    })


def _kernel_facts(model: torch.nn.Module) -> dict[str, Any] | None:
    """What config.json records about the CPU convolution kernels the run trains with."""
    choice = kernel_choice(model)
    return choice.to_dict() if choice is not None else None


def _data_facts(dataset: Dataset, splits: Splits) -> dict[str, Any]:
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
