"""NNPACK convolutions for a plain model, swapped in from outside like ``convert_sync_batchnorm``.

NNPACK's Winograd and FFT kernels need about half the multiply-adds of the direct (im2col or
oneDNN) convolution. :func:`use_nnpack` replaces every eligible ``nn.Conv2d`` of a model (stride
1, odd square kernel, symmetric 'same' padding, no groups or dilation: conv2-conv5 of the ConvNet,
not the even-kernel conv1) by an :class:`NnpackConv2d` holding the very same parameters, and back.
The model computes the same function to ~1e-5; only the speed changes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: NNPACK transforms the kernels anew on every call, which only pays off over a batch: on a 2-core
#: AVX2 EPYC the full model's forward pass took 84 ms with NNPACK vs 43 ms without for 1 image,
#: the same for 16 and 1.5 s vs 2.1 s for 100. (PyTorch's own NNPACK heuristic also wants 16.)
NNPACK_MIN_BATCH = 16


class _NnpackConvolution(torch.autograd.Function):
    """A stride-1, symmetrically padded fp32 CPU convolution computed by NNPACK.

    The forward pass and the input gradient (itself a convolution, with the kernel flipped and its
    in/out channels swapped) run in NNPACK; the weight and bias gradients come from PyTorch's
    default backend, as NNPACK has none for them. Deterministic.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                padding: int) -> torch.Tensor:
        x, weight = x.contiguous(), weight.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return torch._nnpack_spatial_convolution(x, weight, bias, [padding, padding])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        p, k = ctx.padding, weight.shape[-1]
        grad = grad.contiguous()
        grad_x = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(2, 3).transpose(0, 1).contiguous()
            grad_x = torch._nnpack_spatial_convolution(grad, flipped, None, [k - 1 - p] * 2)
        _, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]], [1, 1], [p, p], [1, 1], False, [0, 0], 1,
            [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_x, grad_w, grad_b, None


class NnpackConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that runs a batch of at least :data:`NNPACK_MIN_BATCH` fp32 CPU tensors in
    NNPACK, and anything else in PyTorch's default kernels. Made by :func:`use_nnpack`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[0] >= NNPACK_MIN_BATCH and x.device.type == "cpu"
                and x.dtype == torch.float32 and self.weight.dtype == torch.float32):
            out = _NnpackConvolution.apply(x, self.weight, self.bias, self.kernel_size[0] // 2)
            # NNPACK works in NCHW; answer in the input's format as torch's own convolution does,
            # so a channels-last model's max-pool keeps its channels-last kernel (about 5x faster
            # than the NCHW one here): codes at batch 500 +8%, training unchanged (measured with
            # benchmarks/retrieval.py --sections codes and train_throughput.py on a 2-core Zen 4)
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                out = out.contiguous(memory_format=torch.channels_last)
            return out
        return super().forward(x)


def _eligible(conv: nn.Module) -> bool:
    """A plain stride-1 convolution with an odd square kernel and symmetric 'same' padding."""
    if type(conv) not in (nn.Conv2d, NnpackConv2d):
        return False
    k = conv.kernel_size[0]
    same = conv.padding == "same" or conv.padding == (k // 2, k // 2)
    return (k % 2 == 1 and conv.kernel_size == (k, k) and conv.stride == (1, 1) and same
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def _recast(conv: nn.Conv2d, cls: type[nn.Conv2d]) -> nn.Conv2d:
    """A module of class ``cls`` sharing ``conv``'s parameters, buffers and settings."""
    new = cls.__new__(cls)
    new.__dict__.update(conv.__dict__)
    new._parameters, new._buffers = dict(conv._parameters), dict(conv._buffers)
    return new


def use_nnpack(model: nn.Module, enabled: bool = True,
               layers: list[str] | None = None) -> nn.Module:
    """Run ``model``'s eligible convolutions in NNPACK (``enabled``; only those named in
    ``layers`` when given, the others in PyTorch's default kernels) or all in PyTorch's default
    kernels again; returns ``model``, changed in place. The parameters stay the same objects, so
    an optimizer built before keeps working. Apply it before wrapping in DDP or compiling."""
    if enabled and not torch.backends.nnpack.is_available():  # (this also initialises it)
        raise RuntimeError("NNPACK is not available in this build of torch")
    for prefix, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{prefix}.{name}" if prefix else name
            target = NnpackConv2d if enabled and (layers is None or full in layers) else nn.Conv2d
            if _eligible(child) and type(child) is not target:
                setattr(parent, name, _recast(child, target))
    return model


def eligible_layers(model: nn.Module) -> list[str]:
    """Names of the convolutions of ``model`` that NNPACK can run (conv2-conv5 of the ConvNet)."""
    return [name for name, m in model.named_modules() if _eligible(m)]


def nnpack_layers(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that run in NNPACK."""
    return [name for name, m in model.named_modules() if isinstance(m, NnpackConv2d)]


def nnpack_applies(device: torch.device, precision: str = "fp32", compile: bool = False) -> bool:
    """Whether NNPACK can serve a model's convolutions at all: fp32 on a CPU, not under
    torch.compile (whether it is faster there is measured: :mod:`neuralcodes.kernels.choice`)."""
    return device.type == "cpu" and precision == "fp32" and not compile
