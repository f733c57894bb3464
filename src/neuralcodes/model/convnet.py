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

Neural codes are read by name with :meth:`ConvNet.codes`; nobody needs forward hooks. Faster
CPU kernels are swapped in from outside (:func:`neuralcodes.kernels.nnpack.use_nnpack`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# CODE_LAYERS: the layers whose activations serve as neural codes, as in the paper (Sec. 2).
from neuralcodes.config import CODE_LAYERS, ModelConfig
from neuralcodes.model.layers import SameMaxPool2d, same_conv2d

#: Feature maps :meth:`ConvNet.feature_maps` gives by name.
FEATURE_MAPS: tuple[str, ...] = ("conv3", "conv4", "conv5", "pool5")


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
        self.conv1, self.bn1 = same_conv2d(3, w1, 4), norm(w1)
        self.conv2, self.bn2 = same_conv2d(w1, w2, 5), norm(w2)
        self.conv3, self.bn3 = same_conv2d(w2, w3, 3), norm(w3)
        self.conv4, self.bn4 = same_conv2d(w3, w4, 3), norm(w4)
        self.conv5, self.bn5 = same_conv2d(w4, w5, 3), norm(w5)
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

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Layers 1-5 up to the last pool, before its ReLU: the pre-ReLU layer-5 map."""
        return self._conv_maps(x)[-1]

    def _conv_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """conv3, conv4 (after ReLU), conv5 before its pool and ReLU, and the pre-ReLU layer-5
        map (conv5 -> pool)."""
        x = F.relu(self.pool(self.bn1(self.conv1(x))))
        x = F.relu(self.pool(self.bn2(self.conv2(x))))
        c3 = F.relu(self.bn3(self.conv3(x)))
        c4 = F.relu(self.bn4(self.conv4(c3)))
        c5 = self.bn5(self.conv5(c4))
        return c3, c4, c5, self.pool(c5)

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
        return self._codes_of(self._trunk(x), layers, relu)

    def _codes_of(self, pre5_map: torch.Tensor, layers: Sequence[str], relu: bool
                  ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        act = F.relu if relu else (lambda t: t)
        pre5 = torch.flatten(pre5_map, 1)
        if "5" in layers:
            out["5"] = act(pre5)
        if "6" in layers or "7" in layers:
            pre6 = self.fc6(F.relu(pre5))
            if "6" in layers:
                out["6"] = act(pre6)
            if "7" in layers:
                out["7"] = act(self.fc7(F.relu(pre6)))
        return {name: out[name] for name in layers}

    def feature_maps(
        self, x: torch.Tensor, names: Sequence[str] = ("conv5",), codes: Sequence[str] = ()
    ) -> dict[str, torch.Tensor]:
        """Post-ReLU convolutional feature maps (N, C, H, W) by name, for pooled descriptors
        (MAC, SPoC, GeM, R-MAC), and optionally the pre-ReLU neural codes of ``codes`` (as
        :meth:`codes` gives them) from the same forward pass, without dropout.

        Names: ``conv3``, ``conv4`` (16x16 for 64x64 images), ``conv5`` (ReLU(conv5) *before*
        its 3x3/2 pool, 16x16) and ``pool5`` (after the pool, 8x8: the layer-5 code's map).
        ``conv5`` is the map pooled descriptors are meant for, as in Tolias et al. and
        Radenovic et al., who drop the network's last max-pool: the pool's overlapping 3x3
        windows count most cells of the 16x16 map twice or four times in a sum (SPoC, GeM),
        and R-MAC's regions need the finer grid (3 scales fit in 16x16, hardly in 8x8); MAC is
        the same on both (a max of maxima). ReLU and max-pool commute, so ``pool5`` is exactly
        the ReLU of the layer-5 code.
        """
        unknown = (set(names) - set(FEATURE_MAPS)) | (set(codes) - set(CODE_LAYERS))
        if unknown:
            raise ValueError(f"unknown feature map(s) or code layer(s) {sorted(unknown)}; "
                             f"choose from {FEATURE_MAPS} and {CODE_LAYERS}")
        c3, c4, c5, p5 = self._conv_maps(x)
        maps = {"conv3": c3, "conv4": c4, "conv5": F.relu(c5), "pool5": F.relu(p5)}
        out = {name: maps[name] for name in names}
        if codes:
            out.update({f"code{k}": v for k, v in self._codes_of(p5, codes, False).items()})
        return out


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
