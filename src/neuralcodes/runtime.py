"""Where and how tensors are computed: device choice, mixed precision, threads, input conversion."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from neuralcodes.errors import NeuralCodesError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NeuralCodesError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise NeuralCodesError("--device mps: no MPS device is available")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise NeuralCodesError(f"unknown device '{name}' (choose auto, cpu, cuda or mps)")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """An autocast context for ``precision`` (fp32: no autocast)."""
    if precision not in PRECISIONS:
        raise NeuralCodesError(f"unknown precision '{precision}' (choose fp32, bf16 or fp16)")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


CPU_CONVS = ("auto", "nnpack", "onednn")


def check_cpu_conv(setting: str) -> None:
    """Raise a clear error for an unknown ``train.cpu_conv`` setting."""
    if setting not in CPU_CONVS:
        raise NeuralCodesError(f"unknown cpu_conv '{setting}' (choose {', '.join(CPU_CONVS)})")


def nnpack_enabled(setting: str, device: torch.device, precision: str = "fp32",
                   compile: bool = False) -> bool:
    """Whether conv2-conv5 run in NNPACK (:meth:`ConvNet.use_nnpack`) under ``setting``.

    NNPACK only serves fp32 on a CPU, and not under torch.compile. ``auto`` uses it where torch's
    CPU kernels top out at AVX2, and on AMD's AVX-512 (which runs at AVX2's multiply-add rate);
    oneDNN's kernels win on Intel's AVX-512 (:func:`neuralcodes.kernels.cpu.nnpack_preferred`).
    On a 2-core AVX2 EPYC it made training ~15% faster and inference ~40%
    (benchmarks/train_throughput.py, benchmarks/retrieval.py). ``nnpack`` forces it on a CPU in
    fp32; ``onednn`` never uses it.
    """
    check_cpu_conv(setting)
    if setting == "onednn" or device.type != "cpu" or precision != "fp32" or compile:
        return False
    available = torch.backends.nnpack.is_available()
    if setting == "nnpack" and not available:
        raise NeuralCodesError("cpu_conv nnpack: this build of torch has no NNPACK")
    # perf hook (kernels/cpu.py): AVX2 CPUs and AMD's AVX-512 (Zen 4) prefer NNPACK
    from neuralcodes.kernels.cpu import nnpack_preferred
    return available and (setting == "nnpack" or nnpack_preferred())


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux' MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count (None keeps torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def to_input(
    images: np.ndarray | torch.Tensor,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
) -> torch.Tensor:
    """uint8 images (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1] on ``device``.

    The assignment's "normalize pixel values to [0, 1]" happens here, per batch: storage stays
    uint8. The NHWC storage order is kept physically (channels-last), which is what the CPU
    convolution kernels prefer; pass ``channels_last=False`` for a contiguous NCHW tensor.
    """
    t = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    t = t.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return t.contiguous(memory_format=torch.channels_last if channels_last
                        else torch.contiguous_format)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode under ``torch.inference_mode``, restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)
