"""How long each stage of ``neuralcodes run`` will take here, from short measurements.

:func:`probe_speeds` times a few real training steps, a few forward passes (at the batch size
evaluation uses), one ranking of random codes and one PCA fit on this machine with the run's
settings (seconds in all); :func:`estimate_stages` turns those speeds and the data sizes into an
expected wall time per stage, counting the work each stage really does. On a CPU with native
bf16 arithmetic the probe also times bf16 training, so the plan can say what
``--precision bf16`` would gain, measured rather than guessed. Building the probe's
models chooses the CPU convolution kernels for training and for inference (measured once per
machine: :mod:`neuralcodes.kernels.choice`); the plan says which.
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

from neuralcodes import features
from neuralcodes.config import Config
from neuralcodes.course import course_reference
from neuralcodes.kernels.choice import kernel_choice
from neuralcodes.kernels.cpu import native_bf16
from neuralcodes.model.build import build_model
from neuralcodes.retrieval.metrics import self_retrieval_metrics
from neuralcodes.retrieval.pca import PCA, PCA_FIT_IMAGES
from neuralcodes.runtime import autocast, eval_mode, resolve_device, to_input
from neuralcodes.training.measure import EVAL_BATCH
from neuralcodes.training.throughput import measure_throughput

#: Forward-pass batch of the inference probe: evaluation's batch (the codes' batch, 250, runs at
#: the same speed per image); a batch of 50 ran ~1.2x slower per image on a 2-core CPU.
PROBE_BATCH = EVAL_BATCH
#: Codes ranked by the ranking probe (all pairs): large enough to be timed, small enough to be fast.
PROBE_RANKING = 600
#: Shape of the PCA probe's random codes (images, dims); a fit's time is scaled linearly in both.
PROBE_PCA = (1000, 2048)
#: Forward passes' worth of time per image of the methods study, its pooling included. Set from
#: `python benchmarks/plan.py` (quick run of the 40-class zip, AMD EPYC Zen 4, load ~1.9): at 1.9
#: (before the pooling was batched) the plan said 1.79x the measured time, at 1.0 it said 0.87x.
METHODS_PASS = 1.2
#: Seconds per figure the retrieval stage draws (matplotlib, measured on a 2-core CPU).
FIGURE_S = 0.5


@dataclass(frozen=True)
class Speeds:
    """Measured on this machine with a run's settings."""

    train_ips: float  # training images per second (forward, backward, Adam) at the run's batch
    infer_ips: float  # images per second through the model in eval mode
    ranking_s: float  # seconds to rank PROBE_RANKING codes against each other, per layer
    checkpoint_s: float  # seconds to write one last.pt (weights and Adam's state), synced
    bf16_train_ips: float | None = None  # the same training in bf16, where the CPU has it native
    pca_s: float = 0.0  # seconds to fit the PCA study's PCA on PROBE_PCA random codes
    code_dims: dict[str, int] = dataclasses.field(default_factory=dict)  # layer -> code length
    # train / inference -> the CPU convolution kernels chosen, in words
    kernels: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class StageEstimate:
    name: str
    seconds: float  # the expected time
    detail: str
    upper: float | None = None  # the most it can take (training: every epoch allowed), if more


def expected_epochs(cfg: Config) -> int:
    """Epochs training is expected to run: as many as the course's reference run needed before
    early stopping ended it (10), plus the patience, within the epoch limit."""
    reference = course_reference()["early_stopping"]["stopped_after_epoch"]
    return min(cfg.train.max_epochs, reference + cfg.train.patience)


def probe_speeds(cfg: Config, num_classes: int, folder: Path) -> Speeds:
    """Time training, inference, ranking and a checkpoint write briefly with ``cfg``'s model and
    settings (the checkpoint goes to a temporary file in ``folder``, then is removed)."""
    kernels: dict[str, str] = {}

    def note_kernels(model: torch.nn.Module) -> None:
        choice = kernel_choice(model)
        if choice is not None and choice.layers:
            kernels[choice.mode] = choice.describe()

    train_ips = measure_throughput(cfg, num_classes, steps=2, warmup=1, on_model=note_kernels)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, num_classes, device, inference=True)
    note_kernels(model)
    images = torch.randint(0, 256, (PROBE_BATCH, model.image_size, model.image_size, 3),
                           dtype=torch.uint8)
    with eval_mode(model), autocast(device, cfg.train.precision):
        for i in range(3):  # one untimed warm-up pass
            if i == 1:
                _sync(device)
                began = time.perf_counter()
            out = model.forward_intermediates(to_input(images, device),
                                              features.code_layers(cfg.retrieval.layers))
        _sync(device)
    infer_ips = 2 * PROBE_BATCH / (time.perf_counter() - began)
    code_dims = {layer: int(x[0].numel()) for layer, x in out.items()}
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((PROBE_RANKING, 256), dtype=np.float32)
    labels = np.arange(PROBE_RANKING) % 10
    began = time.perf_counter()
    self_retrieval_metrics(codes, labels)
    ranking_s = time.perf_counter() - began
    pca_codes = rng.standard_normal(PROBE_PCA, dtype=np.float32)
    # the faster of two fits: one is short, and a busy CPU makes a single timing jumpy
    pca_s = min(_time_pca(pca_codes, max(cfg.retrieval.pca_dims)) for _ in range(2))
    checkpoint_s = _time_checkpoint(model, cfg.train.amsgrad, folder)
    bf16 = None
    if device.type == "cpu" and cfg.train.precision == "fp32" and native_bf16():
        bf16_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="bf16"))
        bf16 = measure_throughput(bf16_cfg, num_classes, steps=2, warmup=1)
    return Speeds(train_ips, infer_ips, ranking_s, checkpoint_s, bf16, pca_s, code_dims, kernels)


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer reads the work done, not the launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_pca(codes: np.ndarray, components: int) -> float:
    began = time.perf_counter()
    PCA.fit(codes, components)
    return time.perf_counter() - began


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
    limit, expected = cfg.train.max_epochs, expected_epochs(cfg)
    evaluated = sizes["train"] + sizes["val"] + sizes["test"]
    if expected < limit:
        detail = (f"{expected} epochs, as many as the course's run needed before early stopping "
                  f"ended it; at most {format_duration(limit * epoch)} for all {limit}; "
                  f"{epoch:.1f} s per epoch at {speeds.train_ips:.0f} img/s")
    else:
        detail = (f"{limit} epoch{'s' * (limit != 1)} at most, {epoch:.1f} s per epoch at "
                  f"{speeds.train_ips:.0f} img/s")
    return [
        StageEstimate("train", expected * epoch, detail,
                      limit * epoch if expected < limit else None),
        StageEstimate("evaluate", evaluated / speeds.infer_ips,
                      f"{evaluated:,} images at {speeds.infer_ips:.0f} img/s"),
        _retrieval(cfg, sizes, speeds),
        *([_methods(cfg, sizes, speeds)] if cfg.retrieval.method_families() else []),
    ]


def _retrieval(cfg: Config, sizes: dict[str, int], speeds: Speeds) -> StageEstimate:
    """The retrieval study: the ood codes (both variants in one pass) and those of the PCA's
    training sample, a PCA fit per layer, the all-pairs rankings (mAP of both variants, then
    the full code and each PCA size, plain and whitened, in the PCA study) and the figures."""
    r = cfg.retrieval
    fitted = min(PCA_FIT_IMAGES, sizes["train"])  # training images the PCA study codes
    coded = sizes["ood"] + fitted
    # all-pairs ranking grows with the square of the ood set
    rank_s = speeds.ranking_s * (sizes["ood"] / PROBE_RANKING) ** 2
    rankings, pca = 2 * len(r.layers), 0.0
    for layer in r.layers:
        dims = speeds.code_dims.get(layer, 0)
        components = min(max(r.pca_dims), dims, fitted - 1)
        rankings += 1 + 2 * sum(1 for d in r.pca_dims if d <= components)
        pca += speeds.pca_s * (fitted / PROBE_PCA[0]) * (dims / PROBE_PCA[1])
    figures = len(r.layers) + 2  # top-k per layer, the layers side by side, the PCA plot
    seconds = coded / speeds.infer_ips + rankings * rank_s + pca + figures * FIGURE_S
    return StageEstimate("retrieval", seconds,
                         f"codes of {coded:,} images, {rankings} rankings of "
                         f"{sizes['ood']:,} ood images, {len(r.layers)} PCA fits")


def _methods(cfg: Config, sizes: dict[str, int], speeds: Speeds) -> StageEstimate:
    """The methods study (:mod:`neuralcodes.retrieval.methods.study`): conv maps and codes of
    its training sample, the validation and the ood images in one pass each (pooling costs
    :data:`METHODS_PASS` forward passes in all), the whitenings' fits, GeM's p grid ranked on
    its fitting images, then every row ranked on the ood and the validation images, and the
    parameter grids on validation."""
    from neuralcodes.retrieval.methods import REGISTRY
    from neuralcodes.retrieval.methods.study import (
        GEM_FIT_IMAGES,
        MAPS,
        RERANKERS,
        TRAIN_IMAGES,
        WHITEN_DIMS,
        planned_rows,
    )

    families = cfg.retrieval.method_families()
    fitted = min(TRAIN_IMAGES, sizes["train"])
    coded = fitted + sizes["val"] + sizes["ood"]

    def rank(n: int) -> float:  # all pairs of n codes: grows with the square
        return speeds.ranking_s * (n / PROBE_RANKING) ** 2

    rows, tuning, fits = 3.0, 0.0, 0.0
    if "pooling" in families:
        rows += 3 * (len(MAPS) - 1) + 6
        tuning += len(MAPS) * 6 * rank(min(GEM_FIT_IMAGES, fitted)) / max(rank(sizes["val"]),
                                                                          1e-12)
    if "whitening" in families:
        bases = 3 if "pooling" in families else 2
        rows += bases * 3 * len(WHITEN_DIMS)
        tuning += bases * sum(len(REGISTRY[k].grid.get("shrinkage", ())) for k in ("pcaw", "lw"))
        # per base: one PCA of its training codes (the probe's fit, scaled to their number and
        # an fc code's length), and the learned whitening's two eigendecompositions (512 x 512)
        # per shrinkage, measured at about a probe PCA fit each
        lw_fits = len(REGISTRY["lw"].grid.get("shrinkage", ())) or 1
        fits = bases * speeds.pca_s * (fitted / PROBE_PCA[0] + lw_fits)
    if "reranking" in families:
        # k-reciprocal and diffusion cost several rankings each (measured: ~5x)
        rows += 3 + 2 * 5
        tuning += sum(np.prod([len(v) for v in REGISTRY[n].grid.values()]) for n in RERANKERS)
    seconds = (METHODS_PASS * coded / speeds.infer_ips + fits
               + rows * (rank(sizes["ood"]) + rank(sizes["val"]))
               + tuning * rank(sizes["val"]) + FIGURE_S)
    return StageEstimate("methods", seconds,
                         f"maps of {coded:,} images, {planned_rows(families)} methods ranked on "
                         f"{sizes['ood']:,} ood images ({', '.join(families)})")


def seconds_per_epoch(estimates: list[StageEstimate], cfg: Config) -> float:
    """The training stage's estimate for one epoch."""
    return next(e.seconds for e in estimates if e.name == "train") / expected_epochs(cfg)


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
    total = sum(e.seconds for e in estimates)
    upper = sum(e.upper or e.seconds for e in estimates)
    if len(estimates) > 1:
        lines.append(f"  {'in all':<10} ~{format_duration(total):>9}"
                     + (f"  (at most {format_duration(upper)})" if upper > total else ""))
    lines += [f"Convolution kernels, {mode}: {text}" for mode, text in speeds.kernels.items()]
    if speeds.bf16_train_ips:
        gain = speeds.bf16_train_ips / speeds.train_ips
        lines.append(f"This CPU has native bf16: --precision bf16 trains {gain:.1f}x "
                     f"as fast here (probe: {speeds.bf16_train_ips:.0f} vs "
                     f"{speeds.train_ips:.0f} img/s).")
    return lines
