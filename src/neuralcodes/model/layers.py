"""TensorFlow/Keras 'same' padding for the layers PyTorch does not pad that way by itself.

Keras puts the extra row/column of an odd total padding at the bottom/right. For a stride-1
convolution ``nn.Conv2d(padding="same")`` does exactly that (checked bit for bit against an
explicit pad for 3x3, 4x4 and 5x5 kernels, forward and backward), but for an even kernel it warns
on every first call that it copies the input; :func:`same_conv2d` pads an even kernel's input
explicitly instead (the same copy, without the warning). Max-pooling has no 'same' mode at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(kernel: int, stride: int, size: int) -> tuple[int, int]:
    """Keras 'same' padding (before, after) for one spatial dimension of ``size``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class PaddedConv2d(nn.Conv2d):
    """A stride-1 convolution after an explicit, possibly asymmetric, zero pad of its input."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__(in_channels, out_channels, kernel, stride=1, padding=0)
        before, after = same_padding(kernel, 1, 0)  # stride 1: independent of the size
        self.pad = (before, after, before, after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pad))


def same_conv2d(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    """A stride-1 convolution with Keras 'same' padding: a plain ``nn.Conv2d(padding="same")``
    for an odd kernel (symmetric padding inside the convolution, no copy), a
    :class:`PaddedConv2d` for an even one (conv1 is 4x4: one row/column before, two after)."""
    if kernel % 2:
        return nn.Conv2d(in_channels, out_channels, kernel, padding="same")
    return PaddedConv2d(in_channels, out_channels, kernel)


class SameMaxPool2d(nn.Module):
    """Max-pooling with Keras 'same' padding (padded cells never win the max)."""

    def __init__(self, kernel: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(self.kernel, self.stride, x.shape[-2])
        left, right = same_padding(self.kernel, self.stride, x.shape[-1])
        if top == left == 0 and bottom <= 1 and right <= 1:
            # One cell of padding at the bottom/right only (every even input size): ceil_mode
            # lets the last window hang over the edge, which is the same and needs no copy.
            return F.max_pool2d(x, self.kernel, self.stride, ceil_mode=True)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)
