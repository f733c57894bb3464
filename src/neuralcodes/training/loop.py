"""Training the ConvNet (assignment Task 2): :func:`train` and its epoch loop (what it keeps in
the run directory: :mod:`.records`).

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

import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from neuralcodes.config import Config
from neuralcodes.data import load_data, write_splits_csv
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import write_json
from neuralcodes.kernels.choice import kernel_choice
from neuralcodes.model import checkpoint_meta, count_parameters
from neuralcodes.model.build import build_model
from neuralcodes.model.checkpoint import load_checkpoint, set_rng_state
from neuralcodes.progress import bar as progress_bar
from neuralcodes.runs import CHECKPOINTS, RunDir, check_same_splits
from neuralcodes.runtime import threads
from neuralcodes.training.batches import SplitData, epoch_order
from neuralcodes.training.context import interrupt_flag, log_file
from neuralcodes.training.distributed import Dist, device_for
from neuralcodes.training.early_stopping import EarlyStopping
from neuralcodes.training.measure import evaluate_split
from neuralcodes.training.records import Session, early_stopped_line, run_record
from neuralcodes.training.resume import check_resumable, rewind_to_kept
from neuralcodes.training.step import make_optimizer, train_step
from neuralcodes.training.throughput import precision_warning

log = logging.getLogger(__name__)

T = TypeVar("T")


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


def _train(cfg: Config, run: RunDir, dist: Dist, device: torch.device, resume: bool,
           progress: bool, on_step: Callable[[int, int], None] | None,
           flag: dict[str, bool], start_from: str = "last") -> RunDir:
    t = cfg.train
    _check_arguments(cfg, dist, resume, start_from)
    run, saved, checkpoint, changes, notes = _resume_point(cfg, run, resume, start_from)

    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)  # the same initial weights on every rank

    # rank 0 prepares the cache alone
    dataset, splits = _main_first(dist, lambda: load_data(cfg.data, progress=progress))
    num_classes = len(splits.in_classes)
    if num_classes < 2:
        raise NeuralCodesError(f"need at least 2 in-domain classes to train, got {num_classes}")
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise NeuralCodesError("the train or validation split is empty; use more images per class")
    if checkpoint is not None:
        check_same_splits(run, saved, splits.hash)

    # rank 0 measures the CPU kernels (once per machine); the others read them
    model = _main_first(dist, lambda: build_model(cfg, num_classes, device))
    optimizer = make_optimizer(model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    s = Session(cfg, run, dist, device, model, model, optimizer, scaler,
                EarlyStopping(t.patience), [], progress, on_step, flag,
                course_data=dataset.spec.course)
    s.meta = checkpoint_meta(model, [dataset.wnids[c] for c in splits.in_classes],
                             [dataset.names[c] for c in splits.in_classes])
    torch.manual_seed(t.seed + dist.rank)  # dropout and augmentation draws differ per rank
    start = (1, 0, torch.zeros(3, dtype=torch.float64))
    if checkpoint is not None:
        start = _restore(s, checkpoint)

    if dist.main:
        run.root.mkdir(parents=True, exist_ok=True)
        write_json(run.config, run_record(cfg, dataset, splits, model, dist, changes))
        write_splits_csv(dataset, splits, run.splits_csv)

    if dist.backend is not None:
        s.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        s.net = torch.compile(s.net)

    with log_file(run.log if dist.main else None):
        train_data = SplitData.load(dataset, splits, "train", device)
        val_data = SplitData.load(dataset, splits, "val", device)
        if dist.main:
            _log_start(s, notes, resume, train_data, val_data, start[0])
        _loop(s, train_data, val_data, *start)
    return run


def _check_arguments(cfg: Config, dist: Dist, resume: bool, start_from: str) -> None:
    if cfg.train.batch_size % dist.world:
        raise NeuralCodesError(f"--batch-size {cfg.train.batch_size} is not divisible by the "
                               f"{dist.world} processes")
    if start_from not in CHECKPOINTS:
        raise NeuralCodesError(f"unknown --from '{start_from}' (choose last or best)")
    if start_from == "best" and not resume:
        raise NeuralCodesError("--from best continues a run: use it with --resume RUN")


def _resume_point(cfg: Config, run: RunDir, resume: bool, start_from: str
                  ) -> tuple[RunDir, dict[str, Any], dict[str, Any] | None,
                             list[dict[str, Any]], list[str]]:
    """Where training starts: (the run, its saved config.json, the checkpoint to continue from
    (None: from scratch), the changes to record, the lines to log)."""
    if not resume:
        if run.last_checkpoint.exists() or run.best_checkpoint.exists():
            raise NeuralCodesError(f"{run.root} already holds a run; continue it with "
                                   f"`neuralcodes train --resume {run.root}` or choose another "
                                   "--name")
        return run, {}, None, [], []
    run = RunDir.existing(run.root)
    saved = run.saved()
    changed = check_resumable(Config.from_dict(saved["config"]), cfg, start_from)
    notes = [f"resuming with a changed setting: {d}" for d in changed]
    changes = list(saved.get("changes", []))
    if start_from == "best":
        notes.append("resuming from the kept weights (best.pt) with a fresh Adam")
        checkpoint = rewind_to_kept(run, cfg.train.patience)
        changes.append({"resumed_from": "best", "epoch": checkpoint["epoch"],
                        "changed": changed, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
    else:
        checkpoint = load_checkpoint(run.last_checkpoint)
    return run, saved, checkpoint, changes, notes


def _main_first(dist: Dist, make: Callable[[], T]) -> T:
    """``make()`` on rank 0 first, then on the other ranks (which may reuse what it wrote)."""
    if not dist.main:
        dist.barrier()
    made = make()
    if dist.main:
        dist.barrier()
    return made


def _restore(s: Session, checkpoint: dict[str, Any]) -> tuple[int, int, torch.Tensor]:
    """Load a checkpoint's weights, optimizer, early stopping, RNG states and metrics into
    ``s``; returns where to go on: (epoch, step inside it, the partial epoch's sums)."""
    t, dist = s.cfg.train, s.dist
    partial = torch.zeros(3, dtype=torch.float64)
    s.model.load_state_dict(checkpoint["model"])
    if "optimizer" in checkpoint:  # not when rewound to best.pt: Adam starts afresh
        s.optimizer.load_state_dict(checkpoint["optimizer"])
        s.scaler.load_state_dict(checkpoint["scaler"])
    s.stopping = EarlyStopping(**{**checkpoint["early_stopping"], "patience": t.patience,
                                  "stopped_epoch": None})
    if s.stopping.should_stop:
        s.stopping.stopped_epoch = checkpoint["early_stopping"]["stopped_epoch"]
    start_epoch, start_step = checkpoint["epoch"] + 1, checkpoint["step"]
    ranks = checkpoint.get("ranks")
    if ranks is None:  # rewound to best.pt: fresh random draws for the epochs after it
        torch.manual_seed(t.seed + dist.rank + 7919 * start_epoch)
    else:
        mine = ranks[dist.rank] if checkpoint["world_size"] == dist.world else ranks[0]
        set_rng_state(mine["rng"], s.device)
        partial = mine["partial"]
    s.rows = list(checkpoint["metrics"])  # metrics.jsonl may be ahead of last.pt after a crash
    return start_epoch, start_step, partial


def _log_start(s: Session, notes: list[str], resume: bool, train_data: SplitData,
               val_data: SplitData, start_epoch: int) -> None:
    """The log's first lines: what is trained, on what, with which kernels."""
    t = s.cfg.train
    for note in notes:
        log.info(note)
    log.info(f"{'resuming' if resume else 'training'} {s.run.root}: "
             f"{s.model.num_classes} classes, {len(train_data)} train / {len(val_data)} val "
             f"images, {count_parameters(s.model):,} parameters, device {s.device}, "
             f"{t.precision}" + (f", {s.dist.world} processes" if s.dist.world > 1 else ""))
    choice = kernel_choice(s.model)
    if choice is not None and choice.layers and s.device.type == "cpu":
        log.info(f"convolution kernels: {choice.describe()}")
    warning = precision_warning(s.device, t.precision)
    if warning:
        log.warning(f"warning: {warning}")
    if s.stopping.should_stop and start_epoch <= t.max_epochs:
        log.info(early_stopped_line(s.run, s.stopping.stopped_epoch, t.patience, t.max_epochs))


def _loop(s: Session, train_data: SplitData, val_data: SplitData, start_epoch: int,
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
            s.write_progress(finished=False)
            log.info(f"epoch {epoch:3d}/{t.max_epochs}  train loss {train_loss:.4f} acc "
                     f"{train_acc:.4f} | val loss {val['loss']:.4f} acc {val['top1']:.4f} "
                     f"top-5 {val['top5']:.4f} | {row['seconds']:.0f} s, {img_per_s:.1f} img/s"
                     + ("  *best*" if improved else ""))
        if s.dist.any(s.interrupt["set"])[0]:
            _interrupted(s, epoch, 0)
    if s.dist.main:
        s.write_progress(finished=True)
        es = s.stopping
        how = (f"early-stopped at epoch {es.stopped_epoch}" if es.stopped_epoch
               else f"reached the epoch limit ({t.max_epochs})")
        kept = (f"kept in {s.run.best_checkpoint}" if t.restore_best else
                f"the last epoch's weights are kept in {s.run.best_checkpoint} "
                "(train.restore_best=false)")
        log.info(f"done: {how}; best epoch {es.best_epoch} (val loss {es.best_loss:.4f}); {kept}")


def _train_epoch(s: Session, data: SplitData, epoch: int, start_step: int,
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


def _non_finite(s: Session, epoch: int, step: int) -> None:
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


def _interrupted(s: Session, epoch: int, step: int) -> None:
    if s.dist.main:
        where = f"epoch {epoch}" + (f" + {step} steps" if step else "")
        log.info(f"interrupted: saved {s.run.last_checkpoint} after {where}; continue with "
                 f"`neuralcodes train --resume {s.run.root}`")
    raise KeyboardInterrupt


