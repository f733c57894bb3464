"""Training and evaluation of the ConvNet (assignment Task 2).

The defaults are the assignment's protocol: cross-entropy, Adam (lr 1e-4, amsgrad), batches of
100 reshuffled every epoch with a fixed seed, at most 100 epochs, and early stopping on the
validation loss: training stops at the first epoch whose validation loss is not below the best so
far (patience 0), and the weights kept as ``best.pt`` are those of the best epoch.

Speed: each split's uint8 images are copied once into memory (on the GPU when training there) and
every batch is gathered with one indexing operation and converted to float in [0, 1] by
:func:`neuralcodes.runtime.to_input`; there is no per-image Python work in a step.

Resuming: ``checkpoints/last.pt`` holds the model, the optimizer, the grad scaler, the
early-stopping state, every RNG state (per rank) and, when training was interrupted, the position
inside the epoch. The batch order of an epoch is a pure function of ``(seed, epoch)``, so a resumed
run on the CPU in fp32 ends with exactly the weights of an uninterrupted one.

Distributed: under ``torchrun`` the same code trains with DistributedDataParallel (gloo on CPU,
nccl on CUDA). Every rank draws the same global batch order and takes its share of each global
batch, and the loss is scaled so that the averaged gradient is that of the global batch: the global
batch size stays ``batch_size``. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import platform
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from neuralcodes import __version__
from neuralcodes.config import Config, resumable_settings
from neuralcodes.data import Dataset, Splits, load_data, write_splits_csv
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json, write_json, write_text
from neuralcodes.metrics import topk_correct
from neuralcodes.model import ConvNet, count_parameters
from neuralcodes.runs import RunDir, TrainedRun
from neuralcodes.runtime import (
    autocast,
    eval_mode,
    nnpack_enabled,
    resolve_device,
    set_threads,
    to_input,
)
from neuralcodes.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint

log = logging.getLogger("neuralcodes.train")

EVAL_SPLITS: tuple[str, ...] = ("train", "val", "test")
EVAL_BATCH = 200
#: Learning curves are redrawn after an epoch if this long has passed since the last drawing (and
#: always at the end): every epoch of a real run, without slowing down tiny test runs.
PLOT_INTERVAL_S = 20.0


# --------------------------------------------------------------------------- early stopping


@dataclass
class EarlyStopping:
    """The stopping rule: stop once ``patience + 1`` epochs in a row fail to improve the best loss.

    With the assignment's ``patience=0`` training stops at the first epoch whose validation loss
    is not lower than the best so far. A NaN loss never counts as an improvement.
    """

    patience: int = 0
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_epoch: int | None = None

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record ``epoch``'s validation loss; True when it is a new best (keep its weights)."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            return True
        self.bad_epochs += 1
        if self.should_stop:
            self.stopped_epoch = epoch
        return False

    @property
    def should_stop(self) -> bool:
        """True once the rule says that training is over."""
        return self.bad_epochs > self.patience


# --------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    """This process's place in a (possibly single-process) training job."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False
    comm_device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: torch.device) -> _Dist:
        """Join the process group that ``torchrun`` describes in the environment, if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not torch_dist.is_available():
            raise NeuralCodesError("this torch build has no torch.distributed support")
        owns = not torch_dist.is_initialized()
        if owns:
            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(torch_dist.get_rank(), torch_dist.get_world_size(), owns,
                   device if device.type == "cuda" else torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (returned on its original device)."""
        if self.world == 1:
            return t
        c = t.to(self.comm_device)
        torch_dist.all_reduce(c)
        return c.to(t.device)

    def any(self, *flags: bool) -> list[bool]:
        """For each flag, whether it is set on any rank."""
        t = torch.tensor([float(f) for f in flags])
        return [bool(v) for v in self.sum(t)]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()

    def close(self) -> None:
        if self.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _device_for(name: str) -> torch.device:
    """The device to train on; under torchrun with CUDA, this rank's GPU."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


# --------------------------------------------------------------------------- data in memory


@dataclass
class SplitData:
    """One split's uint8 images (N, 64, 64, 3) and model labels, held on the training device."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def load(cls, dataset: Dataset, splits: Splits, name: str, device: torch.device) -> SplitData:
        """Copy split ``name`` out of the memory-mapped cache (sorted reads) onto ``device``."""
        index = np.sort(getattr(splits, name))
        images = torch.from_numpy(np.ascontiguousarray(dataset.images[index]))
        labels = torch.from_numpy(splits.model_labels(dataset.labels[index]).astype(np.int64))
        return cls(images.to(device), labels.to(device))

    def __len__(self) -> int:
        return len(self.labels)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled order of ``n`` training images in ``epoch``: depends on (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def augment_batch(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random horizontal flips and random ``pad``-pixel translations (zero fill) of a uint8
    NHWC batch, one draw per image from torch's RNG (an "improved" technique, off by default)."""
    n, h, w, _ = x.shape
    flip = torch.rand(n, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(2), x)
    padded = F.pad(x, (0, 0, pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], rows, cols]


# --------------------------------------------------------------------------- evaluation


def evaluate_split(
    model: torch.nn.Module, data: SplitData, *, device: torch.device, precision: str = "fp32",
    channels_last: bool = True, batch_size: int = EVAL_BATCH, progress: bool = False,
    desc: str = "eval", dist: _Dist | None = None,
) -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 accuracy of ``model`` on ``data`` in eval mode.

    Under distributed training each rank evaluates a contiguous shard and the sums are combined.
    """
    dist = dist or _Dist()
    shard = np.array_split(np.arange(len(data)), dist.world)[dist.rank]
    lo, hi = (int(shard[0]), int(shard[-1]) + 1) if len(shard) else (0, 0)
    sums = torch.zeros(4, dtype=torch.float64)
    with eval_mode(model), tqdm(total=hi - lo, unit="img", desc=desc, disable=not progress,
                                leave=False, dynamic_ncols=True) as bar:
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            x = to_input(data.images[start:stop], device, channels_last)
            y = data.labels[start:stop]
            with autocast(device, precision):
                logits = model(x)
            logits = logits.float()
            hits = topk_correct(logits, y, (1, 5))
            loss = F.cross_entropy(logits, y, reduction="sum").item()
            sums += torch.tensor([loss, hits[1], hits[5], stop - start], dtype=torch.float64)
            bar.update(stop - start)
    loss, top1, top5, n = dist.sum(sums).tolist()
    n = max(n, 1)
    return {"loss": loss / n, "top1": top1 / n, "top5": top5 / n, "n": int(n)}


# --------------------------------------------------------------------------- checkpoints


def _rng_state(device: torch.device) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    random.setstate(state["python"])




# --------------------------------------------------------------------------- the training loop


def _data_facts(dataset: Dataset, splits: Splits) -> dict[str, Any]:
    """What config.json records about the data: cache, checksums, split sizes, classes."""
    source = dataset.manifest.get("source", {})
    return {
        "cache": str(dataset.root), "manifest_hash": dataset.manifest_hash,
        "source": source.get("path"), "source_checksum": source.get("checksum"),
        "splits_hash": splits.hash,
        "sizes": {s: len(getattr(splits, s)) for s in ("train", "val", "test", "ood")},
        "num_classes": len(splits.in_classes),
        "ood_classes": [{"wnid": dataset.wnids[c], "name": dataset.names[c]}
                        for c in splits.ood_classes],
    }


def _versions() -> dict[str, str]:
    return {"neuralcodes": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def _check_resumable(saved: Config, cfg: Config) -> None:
    """A resumed run may only change the settings marked resumable in the config."""
    diffs = saved.differences(cfg)
    if diffs:
        allowed = ", ".join(f"{a}.{k}" for a, k in sorted(resumable_settings()))
        raise NeuralCodesError(f"cannot change {diffs[0]} when resuming; only {allowed} may "
                               "change")


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[dict[str, bool]]:
    """Turn the first Ctrl-C into a flag the loop checks between steps (a second one aborts)."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["set"]:
            raise KeyboardInterrupt
        flag["set"] = True

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def _log_handler(handler: logging.Handler | None) -> Iterator[None]:
    """Send this module's INFO lines to ``handler`` (if any) for the duration of the block."""
    if handler is None:
        yield
        return
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)
        handler.close()


def _log_to(path: Path | None) -> contextlib.AbstractContextManager[None]:
    """Also append this module's log lines to ``path`` (rank 0 only; None: nowhere)."""
    if path is None:
        return _log_handler(None)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    return _log_handler(handler)


class _NonFinite(Exception):
    pass


@dataclass
class _Session:
    """Everything one call of :func:`train` works with."""

    cfg: Config
    run: RunDir
    dist: _Dist
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

    def state(self, epoch: int, step: int, partial: torch.Tensor) -> dict[str, Any]:
        """The last.pt contents (a collective call: every rank must call it)."""
        per_rank = self.dist.gather({"rng": _rng_state(self.device), "partial": partial.cpu()})
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": epoch, "step": step, "world_size": self.dist.world,
                "ranks": per_rank, "early_stopping": dataclasses.asdict(self.stopping),
                "metrics": list(self.rows)}

    def save_last(self, epoch: int, step: int, partial: torch.Tensor) -> None:
        state = self.state(epoch, step, partial)
        if self.dist.main:
            save_checkpoint(self.run.last_checkpoint, state)


def train(cfg: Config, out: str | Path, *, resume: bool = False, progress: bool = True,
          on_step: Callable[[int, int], None] | None = None) -> RunDir:
    """Train a ConvNet with ``cfg`` into run directory ``out``; returns the :class:`RunDir`.

    ``resume=True`` continues ``out`` from ``checkpoints/last.pt``; ``cfg`` must then equal the
    saved config except for the settings marked resumable in ``neuralcodes.config``.
    ``on_step(epoch, step)`` is called after every optimizer step (tests use it to simulate a
    Ctrl-C). Ctrl-C saves ``last.pt`` (with the position inside the epoch) and re-raises
    ``KeyboardInterrupt``.
    Under ``torchrun`` this trains with DistributedDataParallel.
    """
    device = _device_for(cfg.train.device)
    dist = _Dist.from_env(device)
    try:
        with _interrupt_flag() as flag, _threads(cfg.train.threads):
            return _train(cfg, RunDir(Path(out)), dist, device, resume, progress and dist.main,
                          on_step, flag)
    finally:
        dist.close()


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch threads inside the block (None: unchanged), restoring the count after."""
    old = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def precision_warning(device: torch.device, precision: str) -> str | None:
    """A warning when ``precision`` would be emulated, hence slow, on this machine's CPU."""
    if device.type != "cpu" or precision == "fp32":
        return None
    try:
        mkldnn = torch.ops.mkldnn
        native = (mkldnn._is_mkldnn_bf16_supported() if precision == "bf16"
                  else mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return None
    if native:
        return None
    return (f"this CPU has no native {precision} arithmetic (AVX512-BF16/AMX/AVX512-FP16): "
            f"{precision} autocast is emulated and far slower than fp32 here; use --precision fp32")


def _train(cfg: Config, run: RunDir, dist: _Dist, device: torch.device, resume: bool,
           progress: bool, on_step: Callable[[int, int], None] | None,
           flag: dict[str, bool]) -> RunDir:
    t = cfg.train
    if t.batch_size % dist.world:
        raise NeuralCodesError(f"--batch-size {t.batch_size} is not divisible by the "
                               f"{dist.world} processes")
    checkpoint: dict[str, Any] | None = None
    if resume:
        run = RunDir.existing(run.root)
        saved = read_json(run.config)
        _check_resumable(Config.from_dict(saved["config"]), cfg)
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
    if checkpoint is not None and saved["data"]["splits_hash"] != splits.hash:
        raise NeuralCodesError(f"the data splits differ from those {run.root} was trained on "
                               "(data cache or split settings changed)")

    model = build_model(cfg, num_classes, device)
    optimizer = make_optimizer(model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    stopping = EarlyStopping(t.patience)
    rows: list[dict[str, Any]] = []
    start_epoch, start_step, partial = 1, 0, torch.zeros(3, dtype=torch.float64)
    torch.manual_seed(t.seed + dist.rank)  # dropout and augmentation draws differ per rank

    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        stopping = EarlyStopping(**{**checkpoint["early_stopping"], "patience": t.patience,
                                    "stopped_epoch": None})
        if stopping.should_stop:
            stopping.stopped_epoch = checkpoint["early_stopping"]["stopped_epoch"]
        start_epoch, start_step = checkpoint["epoch"] + 1, checkpoint["step"]
        ranks = checkpoint["ranks"]
        mine = ranks[dist.rank] if checkpoint["world_size"] == dist.world else ranks[0]
        _set_rng_state(mine["rng"], device)
        partial = mine["partial"]
        rows = list(checkpoint["metrics"])  # metrics.jsonl may be ahead of last.pt after a crash

    if dist.main:
        run.root.mkdir(parents=True, exist_ok=True)
        write_json(run.config, {
            "config": cfg.to_dict(),
            "data": _data_facts(dataset, splits),
            "model": {"parameters": count_parameters(model)},
            "distributed": {"world_size": dist.world},
            "versions": _versions(),
        })
        write_splits_csv(dataset, splits, run.splits_csv)

    net: torch.nn.Module = model
    if dist.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        net = torch.compile(net)

    s = _Session(cfg, run, dist, device, model, net, optimizer, scaler, stopping, rows, progress,
                 on_step, flag)
    with _log_to(run.log if dist.main else None):
        train_data = SplitData.load(dataset, splits, "train", device)
        val_data = SplitData.load(dataset, splits, "val", device)
        if dist.main:
            log.info(f"{'resuming' if resume else 'training'} {run.root}: {num_classes} classes, "
                     f"{len(train_data)} train / {len(val_data)} val images, "
                     f"{count_parameters(model):,} parameters, device {device}, {t.precision}"
                     + (" (conv2-5 in NNPACK)" if model.conv2.nnpack else "")
                     + (f", {dist.world} processes" if dist.world > 1 else ""))
            warning = precision_warning(device, t.precision)
            if warning:
                log.warning(f"warning: {warning}")
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
        if s.dist.main and improved:
            save_checkpoint(s.run.best_checkpoint, {"format": CHECKPOINT_FORMAT,
                                          "model": s.model.state_dict(), "epoch": epoch,
                                          "val_loss": val["loss"]})
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
        log.info(f"done: {how}; best epoch {es.best_epoch} (val loss {es.best_loss:.4f}) "
                 f"kept in {s.run.best_checkpoint}")


def build_model(cfg: Config, num_classes: int, device: torch.device) -> ConvNet:
    """A fresh ConvNet on ``device`` with the training settings' kernels and memory format."""
    t = cfg.train
    model = ConvNet(num_classes, cfg.model).to(device)
    model.use_nnpack(nnpack_enabled(t.cpu_conv, device, t.precision, t.compile))
    return model.to(memory_format=torch.channels_last) if t.channels_last else model


def make_optimizer(model: torch.nn.Module, t: Any) -> torch.optim.Optimizer:
    """Adam with the protocol's lr and amsgrad flag (``t``: TrainConfig).

    The fused implementation (one kernel per step instead of a dozen passes over the 40M
    parameters) is the same update and 3-4x faster on a CPU; it is used where this torch has it.
    """
    try:
        return torch.optim.Adam(model.parameters(), lr=t.lr, amsgrad=t.amsgrad, fused=True)
    except RuntimeError:  # no fused kernel for this device
        return torch.optim.Adam(model.parameters(), lr=t.lr, amsgrad=t.amsgrad)


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, images: torch.Tensor, labels: torch.Tensor,
               t: Any, device: torch.device, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a uint8 NHWC batch; returns (summed loss, number correct).

    The loss is the batch's summed cross-entropy times ``scale`` (1 / global batch size, times the
    world size under DDP, whose gradient average then equals the global batch's mean gradient).
    ``t`` is the TrainConfig (augment, channels_last, precision).
    """
    if t.augment:
        images = augment_batch(images)
    x = to_input(images, device, t.channels_last)
    with autocast(device, t.precision):
        logits = net(x)
    loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss_sum * scale).backward()
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        return loss_sum.detach(), (logits.argmax(1) == labels).sum()


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
    bar = tqdm(total=len(data), initial=min(start_step * t.batch_size, len(data)), unit="img",
               desc=f"epoch {epoch}/{t.max_epochs}", disable=not s.progress, leave=False,
               dynamic_ncols=True)
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
            check = step % 10 == 9 or step == n_steps - 1
            nonfinite = check and not math.isfinite(float(sums[0]))
            if check and s.progress:
                bar.set_postfix(loss=f"{float(sums[0] / sums[2]):.4f}",
                                acc=f"{float(sums[1] / sums[2]):.4f}", refresh=False)
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
    return loss / n, correct / n, done / max(seconds, 1e-9)


def _non_finite(s: _Session, epoch: int, step: int) -> None:
    es = s.stopping
    kept = (f"the best checkpoint (epoch {es.best_epoch}) is kept in {s.run.best_checkpoint}"
            if es.best_epoch else "no checkpoint was written yet")
    raise NeuralCodesError(f"the training loss became NaN/inf at epoch {epoch}, step {step + 1}; "
                           f"{kept}; try a lower --lr or --precision fp32")


def _interrupted(s: _Session, epoch: int, step: int) -> None:
    if s.dist.main:
        where = f"epoch {epoch}" + (f" + {step} steps" if step else "")
        log.info(f"interrupted: saved {s.run.last_checkpoint} after {where}; continue with "
                 f"`neuralcodes train --resume {s.run.root}`")
    raise KeyboardInterrupt


def _write_progress(s: _Session, finished: bool) -> None:
    """metrics.jsonl, curves.png and train_state.json, rewritten atomically each epoch."""
    from neuralcodes.figures import plot_learning_curves

    write_text(s.run.metrics, "".join(json.dumps(r) + "\n" for r in s.rows))
    now = time.monotonic()
    if finished or now - s.plotted >= PLOT_INTERVAL_S:  # every epoch of a real run
        plot_learning_curves(s.rows, s.run.curves)
        s.plotted = now
    es = s.stopping
    write_json(s.run.train_state, {
        "epochs_completed": s.rows[-1]["epoch"] if s.rows else 0,
        "best_epoch": es.best_epoch, "best_val_loss": es.best_loss,
        "stopped_epoch": es.stopped_epoch, "stopped_early": es.stopped_epoch is not None,
        "patience": es.patience, "finished": finished, "device": str(s.device),
    })


def is_finished(run: str | Path) -> bool:
    """True when ``run`` holds a training run that ended (early-stopped or at the epoch limit)."""
    path = RunDir(Path(run)).train_state
    return path.is_file() and bool(read_json(path).get("finished"))


def measure_throughput(cfg: Config, num_classes: int = 190, *, steps: int = 5, warmup: int = 2,
                       progress: bool = False) -> float:
    """Training images per second of ``cfg``'s model and settings, on random uint8 batches.

    Times ``steps`` real training steps (gather, convert, forward, backward, Adam) at
    ``cfg.train.batch_size`` after ``warmup`` untimed ones (compilation happens there).
    """
    with _threads(cfg.train.threads):
        return _measure(cfg, num_classes, steps, warmup, progress)


def _measure(cfg: Config, num_classes: int, steps: int, warmup: int, progress: bool) -> float:
    t = cfg.train
    device = _device_for(t.device)
    gen = torch.Generator().manual_seed(0)
    model = build_model(cfg, num_classes, device)
    net = torch.compile(model) if t.compile else model
    optimizer = make_optimizer(model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    n = t.batch_size
    pool = torch.randint(0, 256, (4 * n, model.image_size, model.image_size, 3),
                         dtype=torch.uint8, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (4 * n,), generator=gen).to(device)
    model.train()
    began = 0.0
    for i in tqdm(range(warmup + steps), desc="throughput", disable=not progress, leave=False):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
        idx = torch.randint(0, 4 * n, (n,), generator=gen).to(device)
        train_step(net, optimizer, scaler, pool[idx], labels[idx], t, device, 1.0 / n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * n / (time.perf_counter() - began)


def probe_throughput(cfg: Config, num_classes: int) -> float:
    """A quick estimate of training img/s: 3 steps of at most 25 images (seconds on a CPU; the
    warm-up step includes compilation with --compile)."""
    small = dataclasses.replace(cfg.train, batch_size=min(cfg.train.batch_size, 25))
    return measure_throughput(dataclasses.replace(cfg, train=small), num_classes, steps=2,
                              warmup=1)


# --------------------------------------------------------------------------- using a trained run


def evaluate(run: str | Path, *, progress: bool = True, device: str = "auto",
             checkpoint: str = "best", precision: str = "fp32",
             batch_size: int = EVAL_BATCH) -> dict[str, Any]:
    """Cross-entropy, top-1 and top-5 accuracy on train/val/test (eval mode: no dropout).

    Writes ``eval.json`` and ``eval.csv`` into the run directory and returns the eval.json dict.
    """
    if batch_size < 1:
        raise NeuralCodesError(f"--batch-size must be positive, got {batch_size}")
    dev = resolve_device(device)
    trained = TrainedRun.load(run, checkpoint=checkpoint, device=dev)
    model, dataset, splits, rd = trained.model, trained.dataset, trained.splits, trained.dir
    result: dict[str, Any] = {"checkpoint": checkpoint, "epoch": trained.epoch, "splits": {}}
    for name in EVAL_SPLITS:
        data = SplitData.load(dataset, splits, name, dev)
        result["splits"][name] = evaluate_split(model, data, device=dev, precision=precision,
                                                batch_size=batch_size, progress=progress,
                                                desc=name)
    write_json(rd.eval_json, result)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["split", "loss", "top1", "top5", "n"])
    for name, m in result["splits"].items():
        writer.writerow([name, f"{m['loss']:.6f}", f"{m['top1']:.6f}", f"{m['top5']:.6f}", m["n"]])
    write_text(rd.eval_csv, buf.getvalue())
    return result


def format_eval_table(result: dict[str, Any]) -> str:
    """The eval.json dict as a fixed-width text table."""
    lines = [f"checkpoint: {result['checkpoint']} (epoch {result['epoch']})",
             f"{'split':<6} {'cross-entropy':>13} {'top-1':>8} {'top-5':>8} {'images':>8}"]
    for name, m in result["splits"].items():
        lines.append(f"{name:<6} {m['loss']:>13.4f} {m['top1']:>8.2%} {m['top5']:>8.2%} "
                     f"{m['n']:>8d}")
    return "\n".join(lines)
