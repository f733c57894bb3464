"""How long each stage of ``neuralcodes run`` will take here, from short measurements.

:func:`probe_speeds` times a few real training steps, a few forward passes and one ranking of
random codes on this machine with the run's settings (seconds in all); :func:`estimate_stages`
turns those speeds and the data sizes into an expected wall time per stage. On a CPU with native
bf16 arithmetic the probe also times bf16 training, so the plan can say what
``--set train.precision=bf16`` would gain, measured rather than guessed.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from neuralcodes.config import Config
from neuralcodes.kernels.cpu import native_bf16
from neuralcodes.retrieval.metrics import self_retrieval_metrics
from neuralcodes.runtime import autocast, eval_mode, resolve_device, to_input
from neuralcodes.training.step import build_model
from neuralcodes.training.throughput import measure_throughput

#: Forward-pass batch of the inference probe, and images it times.
PROBE_BATCH = 50
#: Codes ranked by the ranking probe (all pairs): large enough to be timed, small enough to be fast.
PROBE_RANKING = 600
#: Training images whose codes the PCA study computes (retrieval's PCA_FIT_IMAGES).
PCA_IMAGES = 5000


@dataclass(frozen=True)
class Speeds:
    """Measured on this machine with a run's settings."""

    train_ips: float  # training images per second (forward, backward, Adam) at the run's batch
    infer_ips: float  # images per second through the model in eval mode
    ranking_s: float  # seconds to rank PROBE_RANKING codes against each other, per layer
    checkpoint_s: float  # seconds to write one last.pt (weights and Adam's state), synced
    bf16_train_ips: float | None = None  # the same training in bf16, where the CPU has it native


@dataclass(frozen=True)
class StageEstimate:
    name: str
    seconds: float
    detail: str


def probe_speeds(cfg: Config, num_classes: int, folder: Path) -> Speeds:
    """Time training, inference, ranking and a checkpoint write briefly with ``cfg``'s model and
    settings (the checkpoint goes to a temporary file in ``folder``, then is removed)."""
    train_ips = measure_throughput(cfg, num_classes, steps=2, warmup=1)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, num_classes, device, inference=True)
    images = torch.randint(0, 256, (PROBE_BATCH, model.image_size, model.image_size, 3),
                           dtype=torch.uint8)
    with eval_mode(model), autocast(device, cfg.train.precision):
        for i in range(3):  # one untimed warm-up pass
            if i == 1:
                began = time.perf_counter()
            model.codes(to_input(images, device), layers=("5", "6", "7"))
    infer_ips = 2 * PROBE_BATCH / (time.perf_counter() - began)
    codes = np.random.default_rng(0).standard_normal((PROBE_RANKING, 256), dtype=np.float32)
    labels = np.arange(PROBE_RANKING) % 10
    began = time.perf_counter()
    self_retrieval_metrics(codes, labels)
    ranking_s = time.perf_counter() - began
    checkpoint_s = _time_checkpoint(model, cfg.train.amsgrad, folder)
    bf16 = None
    if device.type == "cpu" and cfg.train.precision == "fp32" and native_bf16():
        bf16_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="bf16"))
        bf16 = measure_throughput(bf16_cfg, num_classes, steps=2, warmup=1)
    return Speeds(train_ips, infer_ips, ranking_s, checkpoint_s, bf16)


def _time_checkpoint(model: torch.nn.Module, amsgrad: bool, folder: Path) -> float:
    """Seconds to write a file the size of ``last.pt`` (weights + 2 or 3 Adam buffers), synced."""
    n = sum(p.numel() for p in model.parameters()) * (4 if amsgrad else 3)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe.", suffix=".tmp") as f:
        began = time.perf_counter()
        torch.save({"state": torch.zeros(n)}, f)
        f.flush()
        os.fsync(f.fileno())
        return time.perf_counter() - began


def estimate_stages(cfg: Config, sizes: dict[str, int], speeds: Speeds) -> list[StageEstimate]:
    """Expected seconds per stage for split ``sizes`` (train/val/test/ood image counts)."""
    # an epoch: its steps, the validation pass, last.pt and (when the epoch is best) best.pt
    epoch = (sizes["train"] / speeds.train_ips + sizes["val"] / speeds.infer_ips
             + 1.25 * speeds.checkpoint_s)
    epochs = cfg.train.max_epochs
    evaluated = sizes["train"] + sizes["val"] + sizes["test"]
    coded = sizes["ood"] + min(PCA_IMAGES, sizes["train"])
    # all-pairs ranking grows with the square of the ood set; both ReLU variants, three layers
    ranking = 2 * 3 * speeds.ranking_s * (sizes["ood"] / PROBE_RANKING) ** 2
    return [
        StageEstimate("train", epochs * epoch,
                      f"{epoch:.1f} s per epoch at {speeds.train_ips:.0f} img/s, at most "
                      f"{epochs} epochs; early stopping usually ends it sooner"),
        StageEstimate("evaluate", evaluated / speeds.infer_ips,
                      f"{evaluated:,} images at {speeds.infer_ips:.0f} img/s"),
        StageEstimate("retrieval", coded / speeds.infer_ips + ranking,
                      f"codes of {coded:,} images, ranking of {sizes['ood']:,} ood images"),
    ]


def seconds_per_epoch(estimates: list[StageEstimate], cfg: Config) -> float:
    """The training stage's estimate for one epoch."""
    return next(e.seconds for e in estimates if e.name == "train") / cfg.train.max_epochs


def format_duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``3.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plan_lines(cfg: Config, estimates: list[StageEstimate], speeds: Speeds) -> list[str]:
    """The plan's time lines: one per stage, and what bf16 would gain where it is native."""
    lines = [f"  {e.name:<10} ~{format_duration(e.seconds):>9}  ({e.detail})" for e in estimates]
    if speeds.bf16_train_ips:
        gain = speeds.bf16_train_ips / speeds.train_ips
        lines.append(f"This CPU has native bf16: --set train.precision=bf16 trains {gain:.1f}x "
                     f"as fast here (probe: {speeds.bf16_train_ips:.0f} vs "
                     f"{speeds.train_ips:.0f} img/s).")
    return lines
