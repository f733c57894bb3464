"""CPU speed settings, each kept because it measurably helped (benchmarks/train_throughput.py).

Measured on a 2-core AMD EPYC (Zen 4: AVX-512 with native bf16), torch 2.13, the full model at
batch 100; interleaved runs, best step of several:

- :func:`keep_freed_memory`: glibc returns every freed block above 32 MB to the OS at once, so
  each step's large activations and gradients came back as fresh pages: ~150,000 page faults per
  training step; a bf16 step took 1.47 s instead of 1.8 s without them (0 faults).
- NNPACK's Winograd/FFT convolutions beat oneDNN's direct ones on Zen 4, which runs AVX-512 at
  AVX2's multiply-add rate (fp32 training 43 img/s with NNPACK vs 34 with oneDNN), and lose on
  other AVX-512 CPUs: which kernel each convolution runs in is measured on the machine
  (:mod:`neuralcodes.kernels.choice`), not guessed from the vendor.

Measured and not kept: torch.compile (inductor) of the bf16 step (68 s to compile on 2 cores,
no faster: 63 vs 64 img/s), NCHW instead of channels-last (bf16 54 vs 64 img/s; fp32 with NNPACK
41 vs 44), fp32 fc6 under bf16 autocast (fc6 forward + backward ~200 ms vs ~100 ms in bf16).
bf16 convolutions already run in oneDNN's brgemm AVX512-BF16 kernels at ~450 GFLOP/s, which
bounds bf16 training at ~75 img/s on two such cores (6.1 GFLOP per training image).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys

import torch

#: glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size are served from (and freed back to) the heap instead of fresh mappings.
MMAP_THRESHOLD = 1 << 30
#: Free memory at the top of the heap is returned to the OS only beyond this much.
TRIM_THRESHOLD = 1 << 31


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc keep freed large blocks for reuse instead of unmapping them (Linux, once per
    process); returns whether the setting is in effect.

    Every training step frees and reallocates the same activation and gradient buffers (tens of
    MB each); by default each comes back as new zero-filled pages, at a page fault per 4 KB. The
    price: the process keeps its peak memory instead of shrinking between steps.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def return_freed_memory() -> None:
    """Undo :func:`keep_freed_memory` for a long-lived server or a last memory-hungry step:
    large blocks become fresh mappings again, free heap above 128 KiB goes back to the OS
    (glibc's initial defaults) and what is free now is returned at once, so a burst of
    requests (or the forward passes before it) does not leave the process at its peak."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
    with contextlib.suppress(AttributeError):
        libc.malloc_trim(0)  # and what is free now goes back at once
    keep_freed_memory.cache_clear()  # a later configure() keeps memory again


@functools.cache
def cpu_vendor() -> str:
    """``AuthenticAMD``, ``GenuineIntel``, ... from /proc/cpuinfo ('' where unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN reports it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def configure(device: torch.device | str = "cpu") -> None:
    """Apply this module's process-wide settings for work on ``device`` (nothing off the CPU)."""
    if torch.device(device).type == "cpu":
        keep_freed_memory()
