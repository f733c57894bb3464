"""How fast training runs here: a measurement on random batches, a quick probe, and a warning
for precisions this CPU only emulates."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from neuralcodes.config import Config
from neuralcodes.model.build import build_model
from neuralcodes.progress import bar as progress_bar
from neuralcodes.runtime import threads
from neuralcodes.training.distributed import device_for
from neuralcodes.training.step import make_optimizer, train_step


def measure_throughput(cfg: Config, num_classes: int = 190, *, steps: int = 5, warmup: int = 2,
                       progress: bool = False,
                       on_model: Callable[[torch.nn.Module], object] | None = None) -> float:
    """Training images per second of ``cfg``'s model and settings, on random uint8 batches.

    Times ``steps`` real training steps (gather, convert, forward, backward, Adam) at
    ``cfg.train.batch_size`` after ``warmup`` untimed ones (compilation happens there).
    ``on_model`` is shown the model built (e.g. to read its kernel choice).
    """
    with threads(cfg.train.threads):
        return _measure(cfg, num_classes, steps, warmup, progress, on_model)


def _measure(cfg: Config, num_classes: int, steps: int, warmup: int, progress: bool,
             on_model: Callable[[torch.nn.Module], object] | None) -> float:
    t = cfg.train
    device = device_for(t.device)
    gen = torch.Generator().manual_seed(0)
    model = build_model(cfg, num_classes, device)
    if on_model is not None:
        on_model(model)
    net = torch.compile(model) if t.compile else model
    optimizer = make_optimizer(model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    n = t.batch_size
    pool = torch.randint(0, 256, (4 * n, model.image_size, model.image_size, 3),
                         dtype=torch.uint8, generator=gen).to(device)
    labels = torch.randint(0, num_classes, (4 * n,), generator=gen).to(device)
    model.train()
    began = 0.0
    for i in progress_bar(range(warmup + steps), desc="throughput", disable=not progress,
                          leave=False):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
        idx = torch.randint(0, 4 * n, (n,), generator=gen).to(device)
        train_step(net, optimizer, scaler, pool[idx], labels[idx], t, device, 1.0 / n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * n / (time.perf_counter() - began)



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
