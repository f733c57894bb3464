"""Training throughput (img/s) of the full ConvNet at batch 100: fp32, bf16, torch.compile, CUDA.

Each configuration times real training steps (uint8 batch gather, conversion to [0, 1], forward,
cross-entropy, backward, Adam with amsgrad) on random images, after untimed warm-up steps (which
include compilation). ``cpu_conv`` is ``auto`` unless a config names ``onednn`` or ``nnpack``
(fp32 CPU kernels of conv2-conv5). Prints one JSON object; numbers on a shared machine are noisy.

    python benchmarks/train_throughput.py          # CPU: fp32 (oneDNN, auto), bf16, bf16+compile
    python benchmarks/train_throughput.py --configs fp32:onednn,fp32:nnpack    # conv kernels
    python benchmarks/train_throughput.py --steps 20 --configs bf16,bf16:compile:nchw
    python benchmarks/train_throughput.py --device cuda --configs fp32,bf16,bf16:compile
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys

import torch

from neuralcodes.config import Config, TrainConfig
from neuralcodes.kernels.nnpack import nnpack_enabled
from neuralcodes.training.throughput import measure_throughput, precision_warning

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default="fp32:onednn,fp32,bf16,bf16:compile",
                   help="comma-separated precision[:compile][:nchw] (default: %(default)s)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation) first")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--classes", type=int, default=190)
    args = p.parse_args()
    results = []
    for spec in args.configs.split(","):
        train = TrainConfig(device=args.device, batch_size=args.batch_size, threads=args.threads,
                            **parse_config(spec))
        cfg = dataclasses.replace(Config(), train=train)
        ips = measure_throughput(cfg, args.classes, steps=args.steps, warmup=args.warmup)
        note = precision_warning(torch.device(args.device), train.precision)
        row = {"config": spec, "img_per_s": round(ips, 1),
               "minutes_per_assignment_epoch": round(ASSIGNMENT_TRAIN_IMAGES / ips / 60, 1)}
        results.append(row | {"note": note} if note else row)
        print(f"{spec:>24}: {ips:7.1f} img/s", file=sys.stderr, flush=True)
    print(json.dumps({
        "benchmark": "train_throughput", "device": args.device,
        "device_name": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                        else platform.processor() or platform.machine()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "auto_cpu_conv": "nnpack" if nnpack_enabled("auto", torch.device("cpu")) else "onednn",
        "torch": torch.__version__, "threads": args.threads or torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "batch_size": args.batch_size, "steps": args.steps,
        "warmup": args.warmup, "results": results}, indent=2))


if __name__ == "__main__":
    main()
