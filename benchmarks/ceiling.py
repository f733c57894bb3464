"""The speed this CPU allows the ConvNet: its convolutions and linear layers alone, in the
project's kernels, against the project's own step and issue 14's goals, in the same run.

Every conv and linear layer of the real model (built as ``train`` builds it: channels-last,
NNPACK where the project uses it, bf16 weights for bf16) is run on its real input shape: forward
only for inference (batch ``--infer-batch``), forward + backward for training (batch
``--batch-size``; no input gradient for conv1, as in training). Everything else a step does
(pooling, ReLU, dropout, the loss, Adam, the uint8 conversion) is left out, so one such "layers
pass" is a lower bound on a step's time, and ``ceiling_img_per_s`` an upper bound on any step
built on these kernels: a goal above it cannot be reached by tuning the rest of the step. fp32
takes, per layer, the faster of NNPACK and oneDNN.

The layers pass and the project's real step (and, for fp32 training, the plain-PyTorch step)
take turns for ``--rounds`` rounds, so load hits all alike: ``headroom_ratio`` (median of the
per-round step time / layers-pass time) is how much faster the step could get at most, and is
robust to load; the absolute img/s need a quiet machine (the load average is printed). The JSON
also gives GFLOP per image, the arithmetic rate of the layers pass, and a 4096^3 matrix product
for reference.

    python benchmarks/ceiling.py
    python benchmarks/ceiling.py --rounds 6 --no-plain
    python benchmarks/ceiling.py --precisions bf16 --parts train
"""

from __future__ import annotations

import argparse
import json
import os
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
from neuralcodes.kernels.choice import cpu_identity  # noqa: E402
from neuralcodes.kernels.nnpack import use_nnpack  # noqa: E402
from neuralcodes.model.build import build_model  # noqa: E402
from neuralcodes.retrieval import extract_codes  # noqa: E402
from train_throughput import project_step  # noqa: E402

#: Issue 14's goals on a CPU with native bf16 (img/s) and its fp32 goal against plain PyTorch.
GOALS = {"bf16_train_img_per_s": 90.0, "bf16_infer_img_per_s_batch_500": 250.0,
         "fp32_train_vs_plain_ratio": 1.5}


def seconds(fn: Callable[[], object]) -> float:
    """Wall time of one call."""
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


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


def layer_call(layer: nn.Module, x: torch.Tensor, train: bool) -> Callable[[], None]:
    """One forward (``train=False``) or forward + backward call of ``layer`` on ``x``."""
    if not train:
        def forward() -> None:
            with torch.no_grad():
                layer(x)
        return forward
    xg = x.detach().requires_grad_(x.shape[1] != 3)  # no input gradient for the image
    grad = torch.randn_like(layer(xg))

    def step() -> None:
        for p in layer.parameters():
            p.grad = None
        layer(xg).backward(grad)
    return step


def layers_pass(precision: str, batch: int, train: bool) -> tuple[Callable[[], None], float]:
    """A call that runs every conv/linear layer of the project's model once at ``batch`` (the
    faster kernel per fp32 conv), and the GFLOP it does."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cfg = Config(train=TrainConfig(device="cpu", precision=precision, batch_size=batch))
    model = build_model(cfg, 190, torch.device("cpu")).to(dtype)
    calls, work = [], 0.0
    for name, x in layer_inputs(model, batch, dtype).items():
        options = [dict(model.named_modules())[name]]
        if precision == "fp32" and isinstance(options[0], nn.Conv2d):  # NNPACK and oneDNN
            options = [dict(use_nnpack(model, on).named_modules())[name] for on in (False, True)]
        runs = [layer_call(layer, x, train) for layer in options]
        for run in runs:
            run()  # warm-up
        calls.append(min(runs, key=lambda run: min(seconds(run) for _ in range(2))))
        passes = (2 if x.shape[1] == 3 else 3) if train else 1  # fwd, weight grad, input grad
        work += passes * flops(options[0], x) / 1e9

    def run_all() -> None:
        for call in calls:
            call()
    return run_all, work


def project_call(precision: str, batch: int, train: bool,
                 kernels: dict[str, Any]) -> Callable[[], object]:
    """The project's own work on one batch: a training step, or neural codes (layers 5-7);
    the convolution kernels ``cpu_conv=auto`` chose go into ``kernels`` (key ``kernels``)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8, generator=gen)
    if train:
        cfg = Config(train=TrainConfig(device="cpu", precision=precision, batch_size=batch))
        step = project_step(cfg, 190, kernels)
        labels = torch.randint(0, 190, (batch,), generator=gen)
        return lambda: step(images, labels)
    cfg = Config(train=TrainConfig(device="cpu", precision=precision))
    model = build_model(cfg, 190, torch.device("cpu"), inference=True, batch_size=batch)
    kernels["kernels"] = model.kernel_choice.to_dict()
    array = images.numpy()
    return lambda: extract_codes(model, array, precision=precision, batch_size=batch,
                                 progress=False)


def measure(precision: str, batch: int, train: bool, rounds: int,
            plain: bool) -> dict[str, Any]:
    """The layers pass, the project's work (and the plain fp32 step) in turns for ``rounds``."""
    run_layers, gflop = layers_pass(precision, batch, train)
    kernels: dict[str, Any] = {}
    contenders = {"layers": run_layers, "project": project_call(precision, batch, train, kernels)}
    if plain:
        step = plain_train_step(190, precision)
        gen = torch.Generator().manual_seed(1)
        x = torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8, generator=gen)
        y = torch.randint(0, 190, (batch,), generator=gen)
        contenders["plain"] = lambda: step(x, y)
    for fn in contenders.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(seconds(fn))
    out: dict[str, Any] = {
        "batch": batch, "gflop_per_img": round(gflop / batch, 2),
        "layers_gflop_per_s": round(gflop / statistics.median(times["layers"]), 1),
        "ceiling_img_per_s": round(batch / statistics.median(times["layers"]), 1),
        "project_img_per_s": round(batch / statistics.median(times["project"]), 1),
        "headroom_ratio": round(statistics.median(
            p / q for p, q in zip(times["project"], times["layers"], strict=True)), 3),
        "project_kernels": kernels.get("kernels")}
    if plain:
        out["plain_img_per_s"] = round(batch / statistics.median(times["plain"]), 1)
        out["ceiling_vs_plain_ratio"] = round(statistics.median(
            p / q for p, q in zip(times["plain"], times["layers"], strict=True)), 3)
    return out


def matmul_gflops(dtype: torch.dtype) -> float:
    """GFLOP/s of a 4096^3 matrix product in ``dtype`` (the CPU's dense arithmetic rate)."""
    a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
    a @ b
    return round(2 * 4096**3 / min(seconds(lambda: a @ b) for _ in range(3)) / 1e9, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=100, help="training batch")
    p.add_argument("--infer-batch", type=int, default=500, help="inference batch")
    p.add_argument("--rounds", type=int, default=4, help="turns per contender")
    p.add_argument("--no-plain", action="store_true", help="no plain-PyTorch fp32 step")
    p.add_argument("--precisions", default=None,
                   help="comma-separated (default: fp32, and bf16 where the CPU has it native)")
    p.add_argument("--parts", default="train,infer", help="train, infer or both")
    args = p.parse_args()
    cpu_kernels.configure("cpu")
    native = cpu_kernels.native_bf16()
    load_before = os.getloadavg()
    out: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native,
        "cpu_kind": cpu_identity(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "matmul_gflop_per_s": {"fp32": matmul_gflops(torch.float32)}}
    if native:
        out["matmul_gflop_per_s"]["bf16"] = matmul_gflops(torch.bfloat16)
    precisions = (args.precisions.split(",") if args.precisions
                  else ["fp32", "bf16"] if native else ["fp32"])
    parts = args.parts.split(",")
    for precision in precisions:
        out[precision] = {}
        if "train" in parts:
            out[precision]["train"] = measure(precision, args.batch_size, True, args.rounds,
                                              precision == "fp32" and not args.no_plain)
        if "infer" in parts:
            out[precision]["infer"] = measure(precision, args.infer_batch, False, args.rounds,
                                              False)
        print(f"{precision}: measured", file=sys.stderr, flush=True)
    goals: dict[str, Any] = {}
    for key, part in (("bf16_train_img_per_s", "train"),
                      ("bf16_infer_img_per_s_batch_500", "infer")):
        if part in out.get("bf16", {}):
            top = out["bf16"][part]["ceiling_img_per_s"]
            goals[key] = {"goal": GOALS[key], "ceiling": top, "attainable": top >= GOALS[key]}
    if not args.no_plain and "train" in out.get("fp32", {}):
        ratio = out["fp32"]["train"]["ceiling_vs_plain_ratio"]
        goals["fp32_train_vs_plain_ratio"] = {"goal": GOALS["fp32_train_vs_plain_ratio"],
                                              "ceiling": ratio,
                                              "attainable": ratio >= GOALS[
                                                  "fp32_train_vs_plain_ratio"]}
    out["goals"] = goals
    out["load_average_before"] = [round(v, 2) for v in load_before]
    out["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
