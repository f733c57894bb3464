"""Training data held on the device: whole splits as uint8, the epoch order, augmentation.

Each split's uint8 images are copied once into memory (on the GPU when training there) and every
batch is gathered with one indexing operation and converted to float in [0, 1] by
:func:`neuralcodes.runtime.to_input`; there is no per-image Python work in a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from neuralcodes.data import Dataset, Splits


@dataclass
class SplitData:
    """One split's uint8 images (N, 64, 64, 3) and model labels, held on the training device."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def load(cls, dataset: Dataset, splits: Splits, name: str, device: torch.device) -> SplitData:
        """Copy split ``name`` out of the memory-mapped cache (sorted reads) onto ``device``."""
        index = np.sort(getattr(splits, name))
        images = torch.from_numpy(np.ascontiguousarray(dataset.images[index]))
        labels = torch.from_numpy(splits.model_labels(dataset.labels[index]).astype(np.int64))
        return cls(images.to(device), labels.to(device))

    def __len__(self) -> int:
        return len(self.labels)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled order of ``n`` training images in ``epoch``: depends on (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def augment_batch(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random horizontal flips and random ``pad``-pixel translations (zero fill) of a uint8
    NHWC batch, one draw per image from torch's RNG (an "improved" technique, off by default)."""
    n, h, w, _ = x.shape
    flip = torch.rand(n, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(2), x)
    padded = F.pad(x, (0, 0, pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], rows, cols]
