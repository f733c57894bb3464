"""The speed this CPU allows the ConvNet: its convolutions and linear layers alone, timed layer by
layer in the project's kernels, against the issue's goals and a plain-PyTorch step.

Every conv and linear layer of the real model (built as ``train`` builds it: channels-last,
NNPACK where the project uses it, bf16 weights for bf16) is timed on its real input shape:
forward (inference, batch ``--infer-batch``) and forward + backward (training, batch
``--batch-size``; no input gradient for conv1, as in training). Everything else a step does
(pooling, ReLU, dropout, the loss, Adam, the uint8 conversion) is left out, so the sum is a lower
bound on a step's time and ``ceiling_img_per_s`` an upper bound on any implementation that uses
these kernels: a goal above it cannot be reached by tuning the rest of the step. The best of
``--reps`` timings per layer is kept (the most favourable case); fp32 takes, per layer, the faster
of NNPACK and oneDNN. The JSON also gives each precision's GFLOP per image, the arithmetic rate
reached (GFLOP/s), a large bf16/fp32 matrix product for reference, the plain-PyTorch fp32
training step measured in the same run, and per goal of issue 14 whether it lies under the
ceiling.

    python benchmarks/ceiling.py
    python benchmarks/ceiling.py --reps 5 --no-plain
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import plain_train_step  # noqa: E402
from neuralcodes.config import Config, TrainConfig  # noqa: E402
from neuralcodes.kernels import cpu as cpu_kernels  # noqa: E402
from neuralcodes.kernels.nnpack import use_nnpack  # noqa: E402
from neuralcodes.training.step import build_model  # noqa: E402

#: Issue 14's goals on a CPU with native bf16 (img/s) and its fp32 goal against plain PyTorch.
GOALS = {"bf16_train_img_per_s": 90.0, "bf16_infer_img_per_s_batch_500": 250.0,
         "fp32_train_vs_plain_ratio": 1.5}


def best_seconds(fn: Callable[[], object], reps: int) -> float:
    """The fastest of ``reps`` timed calls after one untimed call."""
    fn()
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return min(times)


def layer_inputs(model: nn.Module, batch: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every conv/linear layer's input (shape and memory format as in the real forward pass)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen[name] = torch.randn_like(args[0], dtype=dtype)
        return hook
    hooks = [m.register_forward_hook(keep(name)) for name, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    x = torch.rand(batch, 3, 64, 64).to(memory_format=torch.channels_last, dtype=dtype)
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def flops(layer: nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds x 2 of one forward call of ``layer`` on ``x``."""
    if isinstance(layer, nn.Conv2d):
        k = layer.kernel_size[0] * layer.kernel_size[1]  # stride 1, 'same': output side = input's
        per_pixel = layer.out_channels * layer.in_channels * k
        return 2.0 * x.shape[0] * x.shape[2] * x.shape[3] * per_pixel
    return 2.0 * x.shape[0] * layer.in_features * layer.out_features


def time_layer(layer: nn.Module, x: torch.Tensor, train: bool, reps: int) -> float:
    """Seconds of one forward (``train=False``) or forward + backward call."""
    if not train:
        def run() -> None:
            with torch.no_grad():
                layer(x)
        return best_seconds(run, reps)
    xg = x.detach().requires_grad_(x.shape[1] != 3)  # no input gradient for the image
    grad = torch.randn_like(layer(xg))

    def step() -> None:
        for p in layer.parameters():
            p.grad = None
        layer(xg).backward(grad)
    return best_seconds(step, reps)


def ceiling(precision: str, batch: int, train: bool, reps: int) -> dict[str, Any]:
    """Per-layer best times of the project's model at ``batch`` and the img/s they allow."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cfg = Config(train=TrainConfig(device="cpu", precision=precision, batch_size=batch))
    model = build_model(cfg, 190, torch.device("cpu")).to(dtype)
    inputs = layer_inputs(model, batch, dtype)
    layers = dict(model.named_modules())
    seconds: dict[str, float] = {}
    work = 0.0
    for name, x in inputs.items():
        layer = layers[name]
        options = [time_layer(layer, x, train, reps)]
        if precision == "fp32" and isinstance(layer, nn.Conv2d):  # the faster of NNPACK/oneDNN
            for on in (False, True):
                use_nnpack(model, on)
                layers = dict(model.named_modules())
                options.append(time_layer(layers[name], x, train, reps))
        seconds[name] = min(options)
        passes = (2 if x.shape[1] == 3 else 3) if train else 1  # fwd, weight grad, input grad
        work += passes * flops(layer, x)
    total = sum(seconds.values())
    return {"batch": batch, "layer_ms": {k: round(v * 1e3, 1) for k, v in seconds.items()},
            "gflop_per_img": round(work / batch / 1e9, 2),
            "gflop_per_s": round(work / total / 1e9, 1),
            "ceiling_img_per_s": round(batch / total, 1)}


def matmul_gflops(dtype: torch.dtype, reps: int) -> float:
    """GFLOP/s of a 4096^3 matrix product in ``dtype`` (the CPU's dense arithmetic rate)."""
    a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
    return round(2 * 4096**3 / best_seconds(lambda: a @ b, reps) / 1e9, 1)


def plain_fp32(batch: int, steps: int) -> float:
    """Median img/s of the plain-PyTorch fp32 training step (benchmarks/baselines.py)."""
    step = plain_train_step(190, "fp32")
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 190, (batch,), generator=gen)
    step(x, y)
    speeds = []
    for _ in range(steps):
        began = time.perf_counter()
        step(x, y)
        speeds.append(batch / (time.perf_counter() - began))
    return round(statistics.median(speeds), 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=100, help="training batch")
    p.add_argument("--infer-batch", type=int, default=500, help="inference batch")
    p.add_argument("--reps", type=int, default=3, help="timed calls per layer (best kept)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain-PyTorch fp32 step")
    args = p.parse_args()
    cpu_kernels.configure("cpu")
    native = cpu_kernels.native_bf16()
    out: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "matmul_gflop_per_s": {"fp32": matmul_gflops(torch.float32, args.reps)}}
    precisions = ["fp32", "bf16"] if native else ["fp32"]
    if native:
        out["matmul_gflop_per_s"]["bf16"] = matmul_gflops(torch.bfloat16, args.reps)
    for precision in precisions:
        out[precision] = {
            "train": ceiling(precision, args.batch_size, True, args.reps),
            "infer": ceiling(precision, args.infer_batch, False, args.reps)}
        print(f"{precision}: done", file=sys.stderr, flush=True)
    goals: dict[str, Any] = {}
    if native:
        for key, part in (("bf16_train_img_per_s", "train"),
                          ("bf16_infer_img_per_s_batch_500", "infer")):
            top = out["bf16"][part]["ceiling_img_per_s"]
            goals[key] = {"goal": GOALS[key], "ceiling": top, "attainable": top >= GOALS[key]}
    if not args.no_plain:
        plain = plain_fp32(args.batch_size, args.reps + 2)
        top = out["fp32"]["train"]["ceiling_img_per_s"]
        out["plain_fp32_train_img_per_s"] = plain
        goals["fp32_train_vs_plain_ratio"] = {
            "goal": GOALS["fp32_train_vs_plain_ratio"], "ceiling_ratio": round(top / plain, 3),
            "attainable": top / plain >= GOALS["fp32_train_vs_plain_ratio"]}
    out["goals"] = goals
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
