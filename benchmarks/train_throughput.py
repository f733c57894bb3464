"""Training throughput (img/s) of the project's step against plain PyTorch (and Keras), interleaved.

Every contender is built once, warmed up, then timed one step at a time in rounds (A B C A B C
...), so that the drift of a shared machine hits all alike. Contenders: the project's training
step per ``--configs`` entry (uint8 gather, conversion, forward, cross-entropy, backward, fused
Adam; the settings of neuralcodes.kernels.cpu), a plain ``nn.Sequential`` of the same
architecture with torch's defaults (NCHW, Adam(lr 1e-4, amsgrad), bf16 by autocast) per
precision, the course's Keras model when TensorFlow is installed (never a dependency), and with
``--loop`` the real training loop (``_train_epoch``: gather, conversion, step, progress bar) on
as many images as a round of bare steps. The JSON gives, per contender, the best and the median
img/s over the rounds, ``*_ratio`` keys (median of the per-round ratios; ``project_fp32_vs_
fp32:onednn_ratio`` and the like compare ``cpu_conv=auto`` with a forced kernel), the CPU (family,
model, capability, native bf16, AMX), each configuration's convolution kernels as ``cpu_conv``
chose them (``kernels``), and the load average before and after.

    python benchmarks/train_throughput.py                      # fp32 (+ bf16 on native-bf16 CPUs)
    python benchmarks/train_throughput.py --configs fp32,fp32:onednn,bf16 --rounds 8 --loop
    python benchmarks/train_throughput.py --configs fp32,fp32:onednn,fp32:nnpack,bf16 --rounds 6
    python benchmarks/train_throughput.py --device cuda --configs fp32,bf16,bf16:compile --no-plain
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import keras_train_step, plain_train_step  # noqa: E402
from neuralcodes.config import Config, TrainConfig  # noqa: E402
from neuralcodes.kernels import cpu as cpu_kernels  # noqa: E402
from neuralcodes.kernels.choice import cpu_identity, kernel_choice  # noqa: E402
from neuralcodes.model.build import build_model
from neuralcodes.training.batches import SplitData  # noqa: E402
from neuralcodes.training.distributed import Dist  # noqa: E402
from neuralcodes.training.loop import _train_epoch  # noqa: E402
from neuralcodes.training.step import make_optimizer, train_step  # noqa: E402
from neuralcodes.training.throughput import precision_warning  # noqa: E402

#: Training images per epoch under the assignment's protocol (190 classes x 500 x 80%).
ASSIGNMENT_TRAIN_IMAGES = 76_000


def parse_config(spec: str) -> dict[str, object]:
    """``precision[:compile][:nchw][:onednn|:nnpack]`` -> TrainConfig overrides."""
    parts = spec.split(":")
    unknown = set(parts[1:]) - {"compile", "nchw", "onednn", "nnpack"}
    if parts[0] not in ("fp32", "bf16", "fp16") or unknown or {"onednn", "nnpack"} <= set(parts):
        raise SystemExit(f"bad --configs entry '{spec}' "
                         "(precision[:compile][:nchw][:onednn|:nnpack])")
    cpu_conv = "onednn" if "onednn" in parts else "nnpack" if "nnpack" in parts else "auto"
    return {"precision": parts[0], "compile": "compile" in parts,
            "channels_last": "nchw" not in parts, "cpu_conv": cpu_conv}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def project_config(spec: str, args: argparse.Namespace) -> Config:
    train = TrainConfig(device=args.device, batch_size=args.batch_size, threads=args.threads,
                        **parse_config(spec))
    return dataclasses.replace(Config(), train=train)


def project_step(cfg: Config, classes: int, kernels: dict[str, Any] | None = None
                 ) -> Callable[[torch.Tensor, torch.Tensor], object]:
    """The project's training step (what ``train`` runs per batch), built as ``train`` does;
    the convolution kernels chosen go into ``kernels`` (key ``kernels``) when given."""
    t = cfg.train
    device = torch.device(t.device)
    model = build_model(cfg, classes, device)
    choice = kernel_choice(model)
    if kernels is not None and choice is not None:
        kernels["kernels"] = choice.to_dict()
    net = torch.compile(model) if t.compile else model
    optimizer = make_optimizer(model, t)
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    model.train()
    return lambda x, y: train_step(net, optimizer, scaler, x, y, t, device, 1.0 / len(y))


def project_loop(cfg: Config, classes: int, n_images: int
                 ) -> Callable[[torch.Tensor, torch.Tensor], object]:
    """The real training loop over ``n_images`` (a fresh epoch order each call): ``_train_epoch``
    with its gather, conversion, step, loss bookkeeping and progress bar."""
    t = cfg.train
    device = torch.device(t.device)
    model = build_model(cfg, classes, device)
    gen = torch.Generator().manual_seed(1)
    data = SplitData(torch.randint(0, 256, (n_images, 64, 64, 3), dtype=torch.uint8,
                                   generator=gen).to(device),
                     torch.randint(0, classes, (n_images,), generator=gen).to(device))
    session = types.SimpleNamespace(
        cfg=cfg, dist=Dist(), device=device, model=model,
        net=torch.compile(model) if t.compile else model, optimizer=make_optimizer(model, t),
        scaler=torch.amp.GradScaler(device.type, enabled=t.precision == "fp16"),
        progress=True, on_step=None, interrupt={"set": False})
    epochs = iter(range(1, 1 << 30))
    return lambda x, y: _train_epoch(session, data, next(epochs), 0,  # type: ignore[arg-type]
                                     torch.zeros(3, dtype=torch.float64))


def interleave(contenders: dict[str, tuple[Callable[..., object], int]], batches: list[Any],
               rounds: int, device: torch.device) -> dict[str, list[float]]:
    """img/s of every contender in each of ``rounds`` rounds, contenders taking turns."""
    speeds: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        for name, (fn, images) in contenders.items():
            x, y = batches[r % len(batches)]
            _sync(device)
            began = time.perf_counter()
            fn(x, y)
            _sync(device)
            speeds[name].append(images / (time.perf_counter() - began))
    return speeds


def summarise(speeds: dict[str, list[float]], pairs: dict[str, tuple[str, str]]
              ) -> dict[str, Any]:
    out: dict[str, Any] = {name: {"best_img_per_s": round(max(v), 1),
                                  "median_img_per_s": round(statistics.median(v), 1),
                                  "minutes_per_assignment_epoch":
                                      round(ASSIGNMENT_TRAIN_IMAGES / statistics.median(v) / 60, 1)}
                           for name, v in speeds.items()}
    ratios = {key: round(statistics.median(a / b for a, b in zip(speeds[num], speeds[den],
                                                                  strict=True)), 3)
              for key, (num, den) in pairs.items()}
    return {"contenders": out, "ratios": ratios}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default=None, help="comma-separated project configurations "
                   "precision[:compile][:nchw][:onednn|:nnpack] (default: fp32, and bf16 where "
                   "the CPU has native bf16)")
    p.add_argument("--rounds", type=int, default=6, help="timed steps per contender, interleaved")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation) first")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--classes", type=int, default=190)
    p.add_argument("--no-plain", action="store_true", help="no plain-PyTorch baseline")
    p.add_argument("--no-keras", action="store_true", help="no Keras baseline even with TF")
    p.add_argument("--loop", action="store_true",
                   help="also the real training loop (3 steps per round) against 3 bare steps")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu_kernels.configure(device)  # the process-wide settings train() applies
    native = cpu_kernels.native_bf16()
    specs = (args.configs.split(",") if args.configs
             else ["fp32", "bf16"] if device.type != "cpu" or native else ["fp32"])
    load_before = os.getloadavg()
    n = args.batch_size
    gen = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (4 * n, 64, 64, 3), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, args.classes, (4 * n,), generator=gen)
    batches = []
    for _ in range(4):
        idx = torch.randint(0, 4 * n, (n,), generator=gen)
        batches.append((pool[idx].to(device), labels[idx].to(device)))

    contenders: dict[str, tuple[Callable[..., object], int]] = {}
    pairs: dict[str, tuple[str, str]] = {}
    build: dict[str, float] = {}
    notes: dict[str, str] = {}
    kernels: dict[str, Any] = {}

    def add(name: str, make: Callable[[], Callable[..., object]], images: int = n) -> None:
        began = time.perf_counter()
        fn = make()
        for i in range(args.warmup):
            fn(*batches[i % len(batches)])
        _sync(device)
        build[name] = round(time.perf_counter() - began, 1)
        contenders[name] = (fn, images)
        print(f"{name}: built and warmed up in {build[name]} s", file=sys.stderr, flush=True)

    keras = (None if args.no_keras or device.type != "cpu" or "fp32" not in
             [project_config(s, args).train.precision for s in specs]
             else keras_train_step(args.classes, torch.get_num_threads()))
    for spec in specs:
        cfg = project_config(spec, args)
        record: dict[str, Any] = {}
        add(f"project_{spec}", lambda c=cfg, r=record: project_step(c, args.classes, r))
        kernels[f"project_{spec}"] = record.get("kernels")
        note = precision_warning(device, cfg.train.precision)
        if note:
            notes[f"project_{spec}"] = note
        precision = cfg.train.precision
        if not args.no_plain and device.type == "cpu" and f"plain_{precision}" not in contenders:
            add(f"plain_{precision}", lambda pr=precision: plain_train_step(args.classes, pr))
        if f"plain_{precision}" in contenders:
            pairs[f"project_{spec}_vs_plain_ratio"] = (f"project_{spec}", f"plain_{precision}")
        if keras is not None and precision == "fp32":
            if "keras_fp32" not in contenders:
                add("keras_fp32", lambda: keras)
            pairs[f"project_{spec}_vs_keras_ratio"] = (f"project_{spec}", "keras_fp32")
    for spec in specs:  # cpu_conv=auto against each forced kernel of the same configuration
        parts = spec.split(":")
        if "onednn" in parts or "nnpack" in parts:
            continue
        for forced in ("onednn", "nnpack"):
            if f"{spec}:{forced}" in specs:
                pairs[f"project_{spec}_vs_{spec}:{forced}_ratio"] = (f"project_{spec}",
                                                                    f"project_{spec}:{forced}")
    if args.loop:
        cfg = project_config(specs[0], args)
        add(f"loop_{specs[0]}", lambda: project_loop(cfg, args.classes, 3 * n), 3 * n)
        three = project_step(cfg, args.classes)
        add(f"step3_{specs[0]}", lambda: lambda x, y: [three(x, y) for _ in range(3)], 3 * n)
        pairs[f"loop_vs_step_{specs[0]}_ratio"] = (f"loop_{specs[0]}", f"step3_{specs[0]}")

    speeds = interleave(contenders, batches, args.rounds, device)
    result = summarise(speeds, pairs)
    print(json.dumps({
        "benchmark": "train_throughput", "device": args.device,
        "device_name": (torch.cuda.get_device_name() if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_vendor": cpu_kernels.cpu_vendor(), "cpu_native_bf16": native,
        "cpu": cpu_identity(), "kernels": kernels,
        "freed_memory_kept": cpu_kernels.keep_freed_memory(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "batch_size": n, "rounds": args.rounds,
        "warmup": args.warmup, "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "build_and_warmup_seconds": build, **result,
        "keras": "measured" if keras is not None else "not measured (TensorFlow not installed)",
        **({"notes": notes} if notes else {})}, indent=2))


if __name__ == "__main__":
    main()
