"""Descriptors of a split's images for the methods study, in one forward pass per batch: the
paper's codes (layer 5, fc6, fc7; L2-normalised, pre- or post-ReLU) and the pooled descriptors
of the conv maps (MAC, SPoC, SPoC with the centring prior, GeM for each p asked, R-MAC).

The conv maps themselves are never kept: conv5's 256x16x16 map of 5,000 images alone would
take 1.3 GB; each batch's maps are pooled and dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from neuralcodes import features as registry
from neuralcodes.errors import NeuralCodesError
from neuralcodes.progress import bar as progress_bar
from neuralcodes.retrieval.codes import DEFAULT_BATCH, l2_normalize
from neuralcodes.retrieval.methods import pooling
from neuralcodes.runtime import autocast, eval_mode, to_input


def paper_codes() -> dict[str, str]:
    """The paper's codes by row name (``layer5``, ``fc6``, ``fc7``), and the code feature each
    is read from (:mod:`neuralcodes.features`)."""
    return {f.row: f.name for f in registry.features("code") if f.paper}


@dataclass
class Features:
    """Unit-length descriptors of N images by name (``fc6``, ``conv5/mac``, ``conv5/gem-p3``,
    ...), their class labels and the split they come from."""

    codes: dict[str, np.ndarray]
    labels: np.ndarray
    split: str

    def __len__(self) -> int:
        return len(self.labels)


def gem_name(layer: str, p: float) -> str:
    return f"{layer}/gem-p{p:g}"


def pooled_names(layer: str, gem_ps: Sequence[float] = ()) -> list[str]:
    """Names of the descriptors :func:`extract_features` pools from ``layer``."""
    return ([f"{layer}/{n}" for n in ("mac", "spoc", "spoc-centre", "rmac")]
            + [gem_name(layer, p) for p in gem_ps])


#: Images pooled at a time: a chunk's maps (32 x 288 x 16 x 16 floats, 9 MiB) stay in the
#: CPU's cache through the several passes of the poolings (GeM's powers, R-MAC's bands): about
#: twice as fast as pooling the whole batch, and the same numbers (each image is pooled alone).
POOL_CHUNK = 32


def _pool(maps: torch.Tensor, layer: str, gem_ps: Sequence[float],
          only: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The pooled descriptors of one batch of maps (``only``: just those names)."""
    parts = [_pool_chunk(maps[i:i + POOL_CHUNK], layer, gem_ps, only)
             for i in range(0, len(maps), POOL_CHUNK)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _pool_chunk(maps: torch.Tensor, layer: str, gem_ps: Sequence[float],
                only: Collection[str] | None = None) -> dict[str, np.ndarray]:
    maps = maps.float().contiguous()
    makers: dict[str, Callable[[], np.ndarray]] = {
        f"{layer}/mac": lambda: pooling.mac(maps), f"{layer}/spoc": lambda: pooling.spoc(maps),
        f"{layer}/spoc-centre": lambda: pooling.spoc(maps, centre=True),
        f"{layer}/rmac": lambda: pooling.rmac(maps)}
    out = {n: make() for n, make in makers.items() if only is None or n in only}
    ps = [p for p in gem_ps if only is None or gem_name(layer, p) in only]
    if ps:
        out.update({gem_name(layer, p): v for p, v in pooling.gem_grid(maps, ps).items()})
    return out


def extract_features(
    model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, split: str, *,
    gem_ps: Mapping[str, Sequence[float]], codes: Sequence[str] = ("fc6", "fc7"),
    relu: bool = False, batch_size: int = DEFAULT_BATCH, device: torch.device | None = None,
    precision: str = "fp32", progress: bool = False, only: Collection[str] | None = None,
) -> Features:
    """Descriptors of ``images`` (N, 64, 64, 3) uint8: the paper's ``codes`` (names of
    :func:`paper_codes`) and, for every conv map named in ``gem_ps`` (conv3, conv4, conv5),
    its pooled descriptors with GeM at each p of ``gem_ps[map]`` (``only``: just the pooled
    descriptors of these names; R-MAC alone costs as much as a third of the forward pass)."""
    if len(images) == 0:
        raise NeuralCodesError(f"no {split} images to describe")
    paper = paper_codes()
    unknown = set(codes) - set(paper)
    if unknown:
        raise NeuralCodesError(f"unknown code(s) {sorted(unknown)}; choose from "
                               f"{', '.join(paper)}")
    dev = device or next(model.parameters()).device
    layers = tuple(paper[c] for c in codes)
    out: dict[str, np.ndarray] = {}
    n = len(images)
    with eval_mode(model), torch.inference_mode(), progress_bar(
            total=n, unit="img", desc=f"descriptors ({split})", disable=not progress,
            leave=False) as bar:
        for start in range(0, n, batch_size):
            x = to_input(np.array(images[start:start + batch_size]), dev)
            with autocast(dev, precision):
                raw = model.forward_intermediates(x, (*gem_ps, *layers))
            batch: dict[str, np.ndarray] = {}
            for name, layer in zip(codes, layers, strict=True):
                t = raw[layer].float()
                batch[name] = l2_normalize((torch.relu(t) if relu else t).cpu().numpy())
            for layer, ps in gem_ps.items():
                batch.update(_pool(raw[layer].cpu(), layer, ps, only))
            for name, v in batch.items():
                if name not in out:
                    out[name] = np.empty((n, v.shape[1]), np.float32)
                out[name][start:start + len(v)] = v
            bar.update(len(x))
    return Features(out, np.asarray(labels), split)
