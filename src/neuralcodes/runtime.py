"""Where and how tensors are computed: device choice, mixed precision, threads, input conversion.

The choice of CPU convolution kernels lives in :mod:`neuralcodes.kernels`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from neuralcodes.config import PRECISIONS
from neuralcodes.errors import NeuralCodesError

#: Images per forward pass of codes, index and search (their --batch-size default), and the batch
#: an inference model's convolution kernels are chosen for unless told otherwise.
INFER_BATCH = 250

#: The autocast dtype of each precision (fp32: no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = dict(
    zip(PRECISIONS, (None, torch.bfloat16, torch.float16), strict=True))


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
    if precision not in AUTOCAST_DTYPES:
        raise NeuralCodesError(f"unknown precision '{precision}' (choose {', '.join(PRECISIONS)})")
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Use ``n`` torch intra-op threads inside the block (None: unchanged), restoring the count."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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
