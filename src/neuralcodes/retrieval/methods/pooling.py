"""Global descriptors pooled from convolutional feature maps: MAC, SPoC, GeM and R-MAC.

Input: non-negative feature maps ``(N, C, H, W)``, a torch tensor or a numpy array (the
post-ReLU maps of :meth:`neuralcodes.model.ConvNet.feature_maps`; ``conv5`` there is ReLU(conv5)
*before* its 3x3/2 max-pool, 16x16 for 64x64 images: see that method for why). Output: float32
numpy ``(N, C)``, each row L2-normalised (an all-zero map gives a zero row).

- MAC (Razavian et al. 2016; Tolias et al., ICLR 2016): the maximum of each channel.
- SPoC (Babenko & Lempitsky, ICCV 2015): the sum of each channel, optionally weighted by their
  centring prior, a Gaussian on the cell's distance to the map centre with sigma one third of
  the distance from the centre to the nearest border.
- GeM (Radenovic et al., TPAMI 2018): the generalised mean ``(mean x^p)^(1/p)``; p = 1 is SPoC
  (after the L2 normalisation: a mean is a scaled sum) and p -> infinity is MAC.
  :func:`fit_gem_p` chooses p on in-domain training images (the network is frozen here, so p is
  chosen from a grid by training mAP instead of learned by back-propagation).
- R-MAC (Tolias et al., ICLR 2016): square regions at ``levels`` scales (side 2*min(H, W)/(l+1)
  at scale l, l x l regions on a square map, ~40% overlap), the MAC of each region
  L2-normalised, summed, L2-normalised again. Their regional PCA-whitening is left to
  :mod:`~neuralcodes.retrieval.methods.whitening`, applied to the pooled vector as in
  Radenovic et al.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from neuralcodes.errors import NeuralCodesError

#: p values :func:`fit_gem_p` chooses from.
GEM_P_GRID: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
GEM_EPS = 1e-6


def _tensor(maps: Any) -> torch.Tensor:
    x = torch.as_tensor(maps)
    if x.ndim != 4:
        raise NeuralCodesError(f"feature maps must be (N, C, H, W), got {tuple(x.shape)}")
    # contiguous NCHW: the model's maps are channels-last, where a per-channel reduction over
    # the cells is a strided one (several times slower)
    return x.float().contiguous()


def _unit(x: torch.Tensor) -> np.ndarray:
    x = x.double()  # the norm in float64: large p makes GeM's values span many decades
    return (x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)).float().numpy()


def mac(maps: Any) -> np.ndarray:
    """Maximum activation of each channel, L2-normalised."""
    return _unit(_tensor(maps).amax(dim=(2, 3)))


def centring_prior(height: int, width: int) -> torch.Tensor:
    """SPoC's Gaussian weights over the cells (Babenko & Lempitsky, Sec. 3.2): sigma is one
    third of the distance from the centre to the nearest border."""
    ys = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    sigma = min(height, width) / 2 / 3
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma ** 2))


def spoc(maps: Any, centre: bool = False) -> np.ndarray:
    """Sum of each channel (``centre``: weighted by the centring prior), L2-normalised."""
    x = _tensor(maps)
    if centre:  # the weighted sum as one product over the cells: no weighted copy of the maps
        weights = centring_prior(*x.shape[-2:]).float().reshape(-1)
        return _unit(x.flatten(2) @ weights)
    return _unit(x.sum(dim=(2, 3)))


def gem(maps: Any, p: float = 3.0) -> np.ndarray:
    """Generalised mean ``(mean over cells of x^p)^(1/p)`` per channel, L2-normalised; values
    below ``GEM_EPS`` count as ``GEM_EPS`` (as in cirtorch)."""
    if not p > 0:
        raise NeuralCodesError(f"GeM needs p > 0, got {p}")
    x = _tensor(maps).clamp_min(GEM_EPS)
    # (mean x^p)^(1/p) = max * (mean (x/max)^p)^(1/p): no overflow for large p
    top = x.amax(dim=(2, 3), keepdim=True)
    mean = (x / top).pow(p).mean(dim=(2, 3)).double()
    return _unit(top[..., 0, 0].double() * mean.pow(1 / p))


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4
                 ) -> list[tuple[int, int, int]]:
    """R-MAC's square regions ``(top, left, side)`` (Tolias et al., Sec. 3; the sampling of
    cirtorch's ``rmac``): at scale l = 1..levels the side is ``floor(2 min(H, W) / (l + 1))``,
    with l regions along the shorter side and l + extra along the longer one, the extra count
    chosen so that neighbouring regions overlap by about ``overlap``."""
    if levels < 1:
        raise NeuralCodesError(f"R-MAC needs at least one scale, got {levels}")
    short, long_ = min(height, width), max(height, width)
    extra = 0
    if long_ > short:
        steps = np.arange(2, 8)
        b = (long_ - short) / (steps - 1)
        extra = int(np.argmin(np.abs((short ** 2 - short * b) / short ** 2 - overlap))) + 1
    regions = []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        n_h = level + (extra if height > width else 0)
        n_w = level + (extra if width > height else 0)
        tops = _starts(height, side, n_h)
        lefts = _starts(width, side, n_w)
        regions += [(t, left, side) for t in tops for left in lefts]
    return regions


def _starts(size: int, side: int, count: int) -> list[int]:
    """``count`` evenly spaced starts of a window of ``side`` cells in ``size``."""
    if count == 1:
        return [max((size - side) // 2, 0)] if size > side else [0]
    step = (size - side) / (count - 1)
    return sorted({int(math.floor(i * step)) for i in range(count)})


def rmac(maps: Any, levels: int = 3) -> np.ndarray:
    """Sum of the L2-normalised MACs of the regions of :func:`rmac_regions`, L2-normalised."""
    x = _tensor(maps)
    total = torch.zeros(x.shape[:2], dtype=torch.float64)
    columns: dict[tuple[int, int], torch.Tensor] = {}  # max over a band of columns, (N, C, H)
    for top, left, side in rmac_regions(x.shape[2], x.shape[3], levels):
        if (left, side) not in columns:  # shared by the regions of a band: ~4x faster
            columns[left, side] = x[..., left:left + side].amax(dim=3)
        v = columns[left, side][..., top:top + side].amax(dim=2).double()
        total += v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return _unit(total)


def gem_grid(maps: Any, ps: Sequence[float] = GEM_P_GRID) -> dict[float, np.ndarray]:
    """GeM descriptors of ``maps`` for every p of ``ps``, sharing the clamp and the maxima."""
    x = _tensor(maps).clamp_min(GEM_EPS)
    top = x.amax(dim=(2, 3), keepdim=True)
    x /= top
    out = {}
    powers = {1: x}  # integer powers by products of smaller ones: several times cheaper than pow
    for p in ps:
        if not p > 0:
            raise NeuralCodesError(f"GeM needs p > 0, got {p}")
        mean = _power(powers, p).mean(dim=(2, 3)).double()
        out[float(p)] = _unit(top[..., 0, 0].double() * mean.pow(1 / p))
    return out


def _power(powers: dict[int, torch.Tensor], p: float) -> torch.Tensor:
    """``x ** p`` for ``powers[1] = x``: an integer p up to 16 as the product of two smaller
    powers (kept in ``powers`` for the next p), any other p by ``pow``."""
    if p != int(p) or not 1 <= p <= 16:
        return powers[1].pow(p)
    n = int(p)
    if n not in powers:
        half = n // 2
        powers[n] = _power(powers, half) * _power(powers, n - half)
    return powers[n]


def fit_gem_p(train: dict[float, np.ndarray], labels: np.ndarray
              ) -> tuple[float, dict[float, float]]:
    """The p whose GeM descriptors of in-domain *training* images retrieve their own class best:
    each training image queries the others (the ood protocol on training images), and the p of
    the highest mAP wins (ties: the smaller p). ``train``: p -> descriptors (:func:`gem_grid`).
    Returns ``(p, {p: training mAP})``."""
    from neuralcodes.retrieval.metrics import self_retrieval_metrics

    if not train:
        raise NeuralCodesError("no GeM descriptors to choose p from")
    scores = {p: self_retrieval_metrics(x, labels, ks=()).map for p, x in sorted(train.items())}
    best = max(scores, key=lambda p: (scores[p], -p))
    return best, scores
