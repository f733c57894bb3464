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

Features (conv maps, the paper's codes, any registered later) are read by name with
:meth:`ConvNet.forward_intermediates`; nobody needs forward hooks. Faster
CPU kernels are swapped in from outside (:func:`neuralcodes.kernels.nnpack.use_nnpack`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from neuralcodes import features as feats
from neuralcodes.model.layers import SameMaxPool2d, same_conv2d

#: The ConvNet's constructor arguments beside ``num_classes``: the fields of the ``model``
#: settings (:class:`neuralcodes.config.ModelConfig`, which holds their defaults).
ARGS: tuple[str, ...] = ("conv_widths", "fc_width", "dropout", "batch_norm")
POOLED = (1, 2, 5)  # the convolutions a 3x3/2 max-pool follows


class ConvNet(nn.Module):
    """The assignment's ConvNet. ``forward`` returns logits; :meth:`forward_intermediates`
    returns any set of the features declared in :mod:`neuralcodes.features`."""

    def __init__(self, num_classes: int, cfg: Any = None, image_size: int = 64,
                 **args: Any) -> None:
        """``cfg``: an object with the fields :data:`ARGS` (``ModelConfig``), or pass them as
        keyword ``args``."""
        super().__init__()
        if cfg is not None:
            args = {**dataclasses.asdict(cfg), **args}
        if set(args) != set(ARGS):
            raise TypeError(f"ConvNet takes {', '.join(ARGS)}; got {', '.join(sorted(args))}")
        a = args
        self.args = {**a, "conv_widths": tuple(a["conv_widths"])}  # what rebuilds it
        self.num_classes = num_classes
        self.image_size = image_size
        w1, w2, w3, w4, w5 = a["conv_widths"]
        norm = (lambda c: nn.BatchNorm2d(c)) if a["batch_norm"] else (lambda c: nn.Identity())
        self.conv1, self.bn1 = same_conv2d(3, w1, 4), norm(w1)
        self.conv2, self.bn2 = same_conv2d(w1, w2, 5), norm(w2)
        self.conv3, self.bn3 = same_conv2d(w2, w3, 3), norm(w3)
        self.conv4, self.bn4 = same_conv2d(w3, w4, 3), norm(w4)
        self.conv5, self.bn5 = same_conv2d(w4, w5, 3), norm(w5)
        self.pool = SameMaxPool2d(3, 2)
        self.tap_shapes = self._tap_shapes(a["conv_widths"], a["fc_width"], image_size)
        self.drop6 = nn.Dropout(a["dropout"])
        self.fc6 = nn.Linear(math.prod(self.tap_shapes["pool5"]), a["fc_width"])
        self.drop7 = nn.Dropout(a["dropout"])
        self.fc7 = nn.Linear(a["fc_width"], a["fc_width"])
        self.fc8 = nn.Linear(a["fc_width"], num_classes)
        self.reset_parameters()

    @staticmethod
    def _tap_shapes(widths: Sequence[int], fc: int, size: int) -> dict[str, tuple[int, ...]]:
        """Each tap's shape for one image (``size`` x ``size``)."""
        out: dict[str, tuple[int, ...]] = {}
        for i, w in enumerate(widths, 1):
            out[f"conv{i}"] = (w, size, size)
            if i in POOLED:
                size = -(-size // 2)
                out[f"pool{i}"] = (w, size, size)
        return {**out, "fc6": (fc,), "fc7": (fc,)}

    @property
    def model_name(self) -> str:
        """Its name in the model registry (:mod:`neuralcodes.model.registry`)."""
        return "convnet-bn" if self.args["batch_norm"] else "convnet"

    @property
    def code5_shape(self) -> tuple[int, ...]:
        """The layer-5 map's shape (C, H, W)."""
        return self.tap_shapes["pool5"]

    def feature_shape(self, name: str) -> tuple[int, ...]:
        """The shape of feature ``name`` for one image."""
        f = feats.get(name)
        return f.shape_of(self.tap_shapes[f.tap])

    def reset_parameters(self) -> None:
        """Keras' default initialisation, as in the course's reference solution: Glorot-uniform
        weights and zero biases. PyTorch's default init is several times smaller for the large
        fc6 and learns more slowly: on 5 real classes, 40 Adam steps (lr 1e-4, batch 25) took
        the loss from 1.61 to 1.52 with it and to 1.38 with Glorot."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _convs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3),
                (self.conv4, self.bn4), (self.conv5, self.bn5)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of float images (N, 3, H, W) in [0, 1]."""
        for i, (conv, bn) in enumerate(self._convs(), 1):
            x = bn(conv(x))
            x = F.relu(self.pool(x) if i in POOLED else x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc6(self.drop6(x)))
        x = F.relu(self.fc7(self.drop7(x)))
        return self.fc8(x)

    def forward_intermediates(self, x: torch.Tensor, names: Sequence[str]
                              ) -> dict[str, torch.Tensor]:
        """The features ``names`` (registered in :mod:`neuralcodes.features`) of a batch
        of float images, from one forward pass that stops after the last tap they need.

        Dropout is never applied, whatever the module's mode (it is the identity at
        inference). The paper's codes are pre-ReLU; their post-ReLU variant is their ReLU.
        """
        wanted = [feats.get(n) for n in names]
        taps = self._taps(x, {f.tap for f in wanted})
        return {f.name: f.apply(taps[f.tap]) for f in wanted}

    def _taps(self, x: torch.Tensor, need: set[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}

        def keep(name: str, t: torch.Tensor) -> bool:  # True: every tap needed is there
            if name in need:
                out[name] = t
            return len(out) == len(need)

        for i, (conv, bn) in enumerate(self._convs(), 1):
            x = bn(conv(x))
            if keep(f"conv{i}", x):
                return out
            if i in POOLED:
                x = self.pool(x)
                if keep(f"pool{i}", x):
                    return out
            x = F.relu(x)
        x = self.fc6(torch.flatten(x, 1))
        if keep("fc6", x):
            return out
        keep("fc7", self.fc7(F.relu(x)))
        return out


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def layer_table(model: ConvNet) -> list[dict[str, object]]:
    """Layer name, output shape (for one image) and parameter count, for the report."""
    shapes = model.tap_shapes
    rows: list[dict[str, object]] = []
    for i, (conv, _) in enumerate(model._convs(), 1):
        pooled = i in POOLED
        rows.append({"layer": f"conv{i}" + (" + pool" if pooled else ""),
                     "output": list(shapes[f"pool{i}" if pooled else f"conv{i}"]),
                     "parameters": count_parameters(conv)})
    rows += [{"layer": name, "output": [m.out_features], "parameters": count_parameters(m)}
             for name, m in (("fc6", model.fc6), ("fc7", model.fc7), ("fc8", model.fc8))]
    return rows
