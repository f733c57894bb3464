"""The ConvNet of the assignment (Task 1): Babenko et al.'s network, modified for 64x64 images.

    conv1  96 @ 4x4 stride 1 -> max-pool 3x3/2 -> ReLU
    conv2 192 @ 5x5          -> max-pool 3x3/2 -> ReLU
    conv3 288 @ 3x3          -> ReLU
    conv4 288 @ 3x3          -> ReLU
    conv5 256 @ 3x3          -> max-pool 3x3/2 -> ReLU      (layer-5 code: 256x8x8 = 16,384)
    dropout 0.5 -> fc6 2048  -> ReLU                         (layer-6 code: 2,048)
    dropout 0.5 -> fc7 2048  -> ReLU                         (layer-7 code: 2,048)
    fc8 (one logit per in-domain class)

Every conv and pool uses TensorFlow/Keras 'same' padding (the extra row/column of an even
padding goes to the bottom/right), and where a pool follows a conv the order is
conv -> pool -> ReLU, exactly as in the course's reference (Keras) solution. With 190 classes
the model has 40,516,382 parameters.

Neural codes are read by name with :meth:`ConvNet.codes`; nobody needs forward hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuralcodes.config import ModelConfig

#: The layers whose activations serve as neural codes, as in the paper (Sec. 2).
CODE_LAYERS: tuple[str, ...] = ("5", "6", "7")


def _same_padding(kernel: int, stride: int, size: int) -> tuple[int, int]:
    """Keras 'same' padding (before, after) for one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


#: NNPACK transforms the kernels anew on every call, which only pays off over a batch: on a 2-core
#: AVX2 EPYC the full model's forward pass took 84 ms with NNPACK vs 43 ms without for 1 image,
#: the same for 16 and 1.5 s vs 2.1 s for 100. (PyTorch's own NNPACK heuristic also wants 16.)
NNPACK_MIN_BATCH = 16


class _NnpackConv2d(torch.autograd.Function):
    """A stride-1, symmetrically padded fp32 CPU convolution computed by NNPACK.

    NNPACK's Winograd and FFT kernels need about half the multiply-adds of the direct (im2col or
    oneDNN) convolution. The forward pass and the input gradient (itself a convolution, with the
    kernel flipped and its in/out channels swapped) run in NNPACK; the weight and bias gradients
    come from PyTorch's default backend, as NNPACK has none for them. Deterministic; results
    agree with the direct convolution to about 1e-5 relative.
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


class SameConv2d(nn.Conv2d):
    """A stride-1 convolution with Keras 'same' padding, also for even kernels (conv1 is 4x4).

    Odd kernels pad symmetrically inside the convolution (no copy); an even kernel pads one more
    row/column at the bottom/right, which needs an explicit pad. With ``nnpack`` set (see
    :meth:`ConvNet.use_nnpack`), an odd-kernel convolution of a batch of at least
    ``NNPACK_MIN_BATCH`` fp32 CPU tensors runs in NNPACK.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        before, after = _same_padding(kernel, 1, 0)  # stride 1: independent of size
        symmetric = before == after
        super().__init__(in_channels, out_channels, kernel, stride=1,
                         padding=before if symmetric else 0)
        self.pad = None if symmetric else (before, after, before, after)
        self.nnpack = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        elif (self.nnpack and x.shape[0] >= NNPACK_MIN_BATCH and x.device.type == "cpu"
              and x.dtype == torch.float32 and self.weight.dtype == torch.float32):
            return _NnpackConv2d.apply(x, self.weight, self.bias, self.padding[0])
        return super().forward(x)


class SameMaxPool2d(nn.Module):
    """Max-pooling 3x3 stride 2 with Keras 'same' padding (padded cells never win the max)."""

    def __init__(self, kernel: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_padding(self.kernel, self.stride, x.shape[-2])
        left, right = _same_padding(self.kernel, self.stride, x.shape[-1])
        if top == left == 0 and bottom <= 1 and right <= 1:
            # One cell of padding at the bottom/right only (every even input size): ceil_mode
            # lets the last window hang over the edge, which is the same and needs no copy.
            return F.max_pool2d(x, self.kernel, self.stride, ceil_mode=True)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


class ConvNet(nn.Module):
    """The assignment's ConvNet. ``forward`` returns logits; :meth:`codes` returns neural codes."""

    def __init__(
        self, num_classes: int, cfg: ModelConfig | None = None, image_size: int = 64
    ) -> None:
        super().__init__()
        cfg = cfg or ModelConfig()
        self.cfg = cfg
        self.num_classes = num_classes
        self.image_size = image_size
        w1, w2, w3, w4, w5 = cfg.conv_widths
        norm = (lambda c: nn.BatchNorm2d(c)) if cfg.batch_norm else (lambda c: nn.Identity())
        self.conv1, self.bn1 = SameConv2d(3, w1, 4), norm(w1)
        self.conv2, self.bn2 = SameConv2d(w1, w2, 5), norm(w2)
        self.conv3, self.bn3 = SameConv2d(w2, w3, 3), norm(w3)
        self.conv4, self.bn4 = SameConv2d(w3, w4, 3), norm(w4)
        self.conv5, self.bn5 = SameConv2d(w4, w5, 3), norm(w5)
        self.pool = SameMaxPool2d(3, 2)
        side = image_size
        for _ in range(3):
            side = -(-side // 2)
        self.code5_shape = (w5, side, side)
        self.drop6 = nn.Dropout(cfg.dropout)
        self.fc6 = nn.Linear(w5 * side * side, cfg.fc_width)
        self.drop7 = nn.Dropout(cfg.dropout)
        self.fc7 = nn.Linear(cfg.fc_width, cfg.fc_width)
        self.fc8 = nn.Linear(cfg.fc_width, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras' default initialisation, as in the course's reference solution: Glorot-uniform
        weights and zero biases. PyTorch's default init is several times smaller for the large
        fc6 and learns more slowly: on 5 real classes, 40 Adam steps (lr 1e-4, batch 25) took
        the loss from 1.61 to 1.52 with it and to 1.38 with Glorot."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def use_nnpack(self, enabled: bool = True) -> ConvNet:
        """Run conv2-conv5 in NNPACK for batches of fp32 CPU tensors (``enabled``), or always in
        PyTorch's default kernels. conv1 (3 input channels, even kernel) always stays with the
        default, which is faster for it. Changes speed, not the function computed (to ~1e-5)."""
        if enabled and not torch.backends.nnpack.is_available():  # (this also initialises it)
            raise RuntimeError("NNPACK is not available in this build of torch")
        for conv in (self.conv2, self.conv3, self.conv4, self.conv5):
            conv.nnpack = enabled
        return self

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Layers 1-5 up to the last pool, before its ReLU: the pre-ReLU layer-5 map."""
        x = F.relu(self.pool(self.bn1(self.conv1(x))))
        x = F.relu(self.pool(self.bn2(self.conv2(x))))
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.conv4(x)))
        return self.pool(self.bn5(self.conv5(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of float images (N, 3, H, W) in [0, 1]."""
        x = torch.flatten(F.relu(self._trunk(x)), 1)
        x = F.relu(self.fc6(self.drop6(x)))
        x = F.relu(self.fc7(self.drop7(x)))
        return self.fc8(x)

    def codes(
        self, x: torch.Tensor, layers: Sequence[str] = CODE_LAYERS, relu: bool = False
    ) -> dict[str, torch.Tensor]:
        """Neural codes of ``layers`` (any of "5", "6", "7") for a batch, without dropout.

        ``relu=False`` gives pre-ReLU activations (what the course's reference solution used);
        ``relu=True`` gives post-ReLU ones. Codes are not normalised here. Dropout is never
        applied, whatever the module's mode (dropout is the identity at inference).
        """
        unknown = set(layers) - set(CODE_LAYERS)
        if unknown:
            raise ValueError(f"unknown code layer(s) {sorted(unknown)}; choose from {CODE_LAYERS}")
        out: dict[str, torch.Tensor] = {}
        act = F.relu if relu else (lambda t: t)
        pre5 = torch.flatten(self._trunk(x), 1)
        if "5" in layers:
            out["5"] = act(pre5)
        if "6" in layers or "7" in layers:
            pre6 = self.fc6(F.relu(pre5))
            if "6" in layers:
                out["6"] = act(pre6)
            if "7" in layers:
                out["7"] = act(self.fc7(F.relu(pre6)))
        return {name: out[name] for name in layers}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layer_table(model: ConvNet) -> list[dict[str, object]]:
    """Layer name, output shape (for one image) and parameter count, for the report."""
    rows: list[dict[str, object]] = []
    side = model.image_size
    shapes: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    for i, conv in enumerate([model.conv1, model.conv2, model.conv3, model.conv4, model.conv5]):
        if i in (0, 1, 4):
            side = -(-side // 2)
        shapes.append((f"conv{i + 1}" + (" + pool" if i in (0, 1, 4) else ""), conv,
                       (conv.out_channels, side, side)))
    shapes += [("fc6", model.fc6, (model.fc6.out_features,)),
               ("fc7", model.fc7, (model.fc7.out_features,)),
               ("fc8", model.fc8, (model.fc8.out_features,))]
    for name, module, shape in shapes:
        rows.append({"layer": name, "output": list(shape), "parameters": count_parameters(module)})
    return rows
