"""Would Winograd convolutions lift the bf16 ceiling? F(2x2, 3x3) from PyTorch operations against
oneDNN's direct convolution, on conv3's and conv4's shapes (batch 100, channels-last, forward).

Winograd F(2x2, 3x3) needs 16 multiplies per 2x2 output tile instead of 36 (2.25x fewer); its
products become 16 batched matrix products over the channels, and the input/output transforms are
small fixed matrices. Prints one JSON object: per shape and precision, the milliseconds of each,
the effective GFLOP/s (direct-convolution FLOPs / time) and the relative error against fp32.
A result of issue 14: the transforms, written with PyTorch operations, cost more than the
multiply-adds they save (README, Performance).

    python benchmarks/winograd.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from neuralcodes.kernels.cpu import configure, native_bf16

BT = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float32)
G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
AT = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float32)


def winograd_conv3x3(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A stride-1, padding-1 3x3 convolution of ``x`` (N, C, H, W; H, W even) by ``w`` (K, C, 3,
    3), its products in ``dtype``."""
    n, c, h, wd = x.shape
    k = w.shape[0]
    th, tw = h // 2, wd // 2
    tiles = F.pad(x, (1, 1, 1, 1)).to(dtype).unfold(2, 4, 2).unfold(3, 4, 2)  # N,C,th,tw,4,4
    bt = BT.to(dtype)
    v = (bt @ tiles @ bt.T).permute(4, 5, 0, 2, 3, 1).reshape(16, n * th * tw, c)
    u = (G @ w.float() @ G.T).to(dtype).permute(2, 3, 1, 0).reshape(16, c, k)
    m = torch.bmm(v, u).view(4, 4, n, th, tw, k).permute(2, 5, 3, 4, 0, 1)
    at = AT.to(dtype)
    return (at @ m @ at.T).permute(0, 1, 2, 4, 3, 5).reshape(n, k, h, wd)


def best_ms(fn: Callable[[], object], reps: int = 3) -> float:
    """The fastest of ``reps`` timed calls after one untimed call, in ms."""
    fn()
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return round(min(times) * 1e3, 1)


def main() -> None:
    configure("cpu")
    torch.manual_seed(0)
    out: dict[str, object] = {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                              "native_bf16": native_bf16(), "threads": torch.get_num_threads()}
    dtypes = [torch.bfloat16, torch.float32] if native_bf16() else [torch.float32]
    for name, (c, k) in {"conv3": (192, 288), "conv4": (288, 288)}.items():
        x, w = torch.randn(100, c, 16, 16), torch.randn(k, c, 3, 3) * 0.05
        gflop = 2 * 100 * 16 * 16 * k * c * 9 / 1e9
        with torch.no_grad():
            ref = F.conv2d(x, w, padding=1)
            for dtype in dtypes:
                xc = x.to(dtype).contiguous(memory_format=torch.channels_last)
                wc = w.to(dtype).contiguous(memory_format=torch.channels_last)
                direct = best_ms(lambda xc=xc, wc=wc: F.conv2d(xc, wc, padding=1))
                wino = best_ms(lambda xc=xc, w=w, dt=dtype: winograd_conv3x3(xc, w, dt))
                err = [float((y.float() - ref).norm() / ref.norm()) for y in
                       (F.conv2d(xc, wc, padding=1), winograd_conv3x3(xc, w, dtype))]
                out[f"{name}_{str(dtype).split('.')[1]}"] = {
                    "direct_ms": direct, "winograd_ms": wino,
                    "direct_gflop_per_s": round(gflop / direct * 1e3, 1),
                    "winograd_effective_gflop_per_s": round(gflop / wino * 1e3, 1),
                    "winograd_vs_direct_speed_ratio": round(direct / wino, 3),
                    "direct_rel_error": round(err[0], 5), "winograd_rel_error": round(err[1], 5)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
