"""Search the ood set with a pooled conv descriptor (``search --method``, the web app's method
selector), and say why a hit is similar: each spatial cell's share of the score.

The descriptors are those of the methods study (:mod:`.pooling` on :data:`MAP`, the 16x16
ReLU(conv5) map before its pool), one per pooling method of the registry; the ood set's are
computed once per :class:`PooledSearch` (one forward pass over the ood images).

**Why similar.** A pooled descriptor is ``f = g / |g|`` with ``g_k`` pooled from channel k's
cells, and the score of a query q and a hit h is ``sum_k f_q[k] f_h[k]``. Each channel's term is
shared among the cells of one image in proportion to what each cell put into ``g_k``: ``x`` for
SPoC (exactly linear), ``w x`` with SPoC's centring prior ``w``, ``x^p`` for GeM (its mean of
p-th powers), and everything to the maximal cell for MAC. R-MAC sums regional maxima and is
shared like MAC (the maximal cell of the whole map; an approximation). So the cells of the
query's map sum to the score, and so do the hit's: :func:`cell_contributions`.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.codes import ood_codes
from neuralcodes.retrieval.methods import REGISTRY, get, pooling
from neuralcodes.retrieval.methods.features import extract_features, gem_name
from neuralcodes.runtime import autocast, eval_mode, to_input

#: The conv map every searchable descriptor is pooled from.
MAP = "conv5"


def method_names() -> list[str]:
    """The registry's pooling methods: the names ``--method`` accepts."""
    return [n for n, s in REGISTRY.items() if s.family == "pooling"]


def gem_p(name: str, methods_table: dict[str, Any] | None) -> float | None:
    """GeM's p for ``name`` (None: not a GeM); ``gem-fit`` reads the p the methods study
    fitted on training images (methods.json), refused in one line without it."""
    spec = get(name, "pooling")
    if spec.fn is not pooling.gem:
        return None
    if "p" in spec.params:
        return float(spec.params["p"])
    fitted = ((methods_table or {}).get("fit") or {}).get("gem_p", {}).get(MAP)
    if fitted is None:
        raise NeuralCodesError(f"--method {name} uses the p fitted by the methods study: run "
                               "`neuralcodes retrieval RUN` first (retrieval.methods on)")
    return float(fitted)


def _key(name: str, p: float | None) -> str:
    return gem_name(MAP, p) if p is not None else f"{MAP}/{name}"


def shares(maps: torch.Tensor, name: str, p: float | None = None) -> torch.Tensor:
    """How each cell's part of each pooled channel is counted, (N, C, H, W), summing to 1 over
    the cells of each channel (see the module docstring)."""
    x = maps.float().contiguous()
    spec = get(name, "pooling")
    if p is not None:
        x = x.clamp_min(pooling.GEM_EPS)
        w = (x / x.amax(dim=(2, 3), keepdim=True)).pow(p)
    elif spec.fn is pooling.spoc:
        w = x * pooling.centring_prior(*x.shape[-2:]).float() if spec.params.get("centre") else x
    else:  # MAC, R-MAC: the maximal cell of each channel
        flat = x.flatten(2)
        w = torch.zeros_like(flat).scatter_(2, flat.argmax(dim=2, keepdim=True), 1.0)
        w = w.view_as(x)
    total = w.sum(dim=(2, 3), keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(1e-30), torch.zeros_like(w))


def cell_contributions(query_maps: torch.Tensor, hit_maps: torch.Tensor, name: str,
                       p: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Each cell's share of the score, for the query's map and the hit's (both ``(C, H, W)``),
    and the score; each grid sums to the score."""
    spec = get(name, "pooling")
    q, h = query_maps[None].float(), hit_maps[None].float()
    fq, fh = ((spec(m, p=p) if p is not None else spec(m)) for m in (q, h))
    term = torch.from_numpy(fq[0] * fh[0])[:, None, None]  # each channel's part of the score
    grid_q = (shares(q, name, p)[0] * term).sum(0).numpy()
    grid_h = (shares(h, name, p)[0] * term).sum(0).numpy()
    return grid_q, grid_h, float(term.sum())


class PooledSearch:
    """The ood set's pooled descriptors of a run (computed on first use, once) and the search
    and explanation with them. ``run``: a :class:`~neuralcodes.runs.TrainedRun`."""

    def __init__(self, run: Any, methods_table: dict[str, Any] | None = None) -> None:
        self.run = run
        self.table = methods_table
        self._db: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()

    def _descriptors(self) -> dict[str, np.ndarray]:
        with self._lock:
            if self._db is None:
                codes = ood_codes(self.run, self.run.relu())
                images = self.run.images(codes.index)
                ps = sorted({3.0} | ({gem_p("gem-fit", self.table)} if self._has_fit() else set()))
                feats = extract_features(self.run.model, images, codes.labels, "ood",
                                         gem_ps={MAP: ps}, codes=(), precision=self.run.precision,
                                         progress=self.run.progress)
                self._db = feats.codes
        return self._db

    def _has_fit(self) -> bool:
        return bool(((self.table or {}).get("fit") or {}).get("gem_p", {}).get(MAP))

    def maps(self, images: np.ndarray) -> torch.Tensor:
        """The :data:`MAP` feature maps (N, C, H, W) of uint8 images (N, 64, 64, 3)."""
        model = self.run.model
        dev = next(model.parameters()).device
        with eval_mode(model), torch.inference_mode(), autocast(dev, self.run.precision):
            x = to_input(np.array(images), dev)
            return model.forward_intermediates(x, (MAP,))[MAP].float().cpu()

    def describe(self, images: np.ndarray, name: str) -> np.ndarray:
        """Unit descriptors (N, C) of uint8 images with pooling method ``name``."""
        p = gem_p(name, self.table)
        spec = get(name, "pooling")
        maps = self.maps(images)
        return spec(maps, p=p) if p is not None else spec(maps)

    def database(self, name: str) -> np.ndarray:
        """The ood set's unit descriptors (N, C) of pooling method ``name``."""
        p = gem_p(name, self.table)  # an unknown name or a gem-fit without its p: one line
        return self._descriptors()[_key(name, p)]

    def search(self, query: np.ndarray, name: str, k: int, exclude: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Ids and scores of the top ``k`` ood images for one unit descriptor ``query`` (ties
        by id; ``exclude``: an ood id left out, the query itself)."""
        db = self.database(name)
        scores = db @ query.astype(np.float32)
        if exclude is not None:
            scores[exclude] = -np.inf
        order = np.lexsort((np.arange(len(scores)), -scores))[:min(k, len(scores) - (
            exclude is not None))]
        return order, scores[order]

    def explain(self, query_image: np.ndarray, hit_image: np.ndarray, name: str
                ) -> tuple[np.ndarray, np.ndarray, float]:
        """:func:`cell_contributions` of two uint8 images (64, 64, 3)."""
        maps = self.maps(np.stack([query_image, hit_image]))
        return cell_contributions(maps[0], maps[1], name, gem_p(name, self.table))


def overlay(image: np.ndarray, grid: np.ndarray, size: int = 128, vmax: float | None = None
            ) -> np.ndarray:
    """``image`` (H, W, 3) uint8 enlarged to ``size`` with ``grid``'s cells as a heat map on
    top (red: a large share of the score; scaled to ``vmax``, default the grid's maximum)."""
    from PIL import Image

    base = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.NEAREST),
                      np.float32)
    top = max(float(vmax if vmax is not None else grid.max()), 1e-12)
    heat = np.clip(grid / top, 0, 1).astype(np.float32)
    heat = np.asarray(Image.fromarray(heat).resize((size, size), Image.Resampling.BILINEAR))
    alpha = 0.65 * heat[..., None]
    red = np.array([255, 40, 0], np.float32)
    return (base * (1 - alpha) + red * alpha).clip(0, 255).astype(np.uint8)


def methods_table(run: Any) -> dict[str, Any] | None:
    """The run's methods.json when it was made from the current weights (None otherwise)."""
    from neuralcodes import lineage
    from neuralcodes.files import read_json

    path = run.dir.methods_file("json")
    if not path.is_file():
        return None
    made = lineage.recorded(path) or {}
    now = lineage.weights_identity(run.dir.best_checkpoint)
    return read_json(path) if made.get("weights") == now else None


def search_with_method(image: Any, run: Any, method: str, *, k: int = 5,
                       why: str | None = None, device: str = "auto",
                       precision: str | None = None, progress: bool = False) -> list[Any]:
    """``neuralcodes search --method``: the ood set ranked by a pooled descriptor of one
    query image (a path or a uint8 array); ``why``: also save a PNG where each row is the query
    and one hit, each with the cells' shares of their score as a heat map."""
    from neuralcodes.files import require_folder
    from neuralcodes.retrieval.images import read_image
    from neuralcodes.retrieval.search import Hit
    from neuralcodes.runs import TrainedRun

    get(method, "pooling")  # an unknown name: one line, before any work
    if k < 1:
        raise NeuralCodesError(f"k must be positive, got {k}")
    if why:
        why = str(require_folder(why, "--why figure"))
    query = image if isinstance(image, np.ndarray) else read_image(image)
    r = run if isinstance(run, TrainedRun) else TrainedRun.open(
        run, device=device, precision=precision, progress=progress)
    searcher = PooledSearch(r, methods_table(r))
    ids, scores = searcher.search(searcher.describe(query[None], method)[0], method, k)
    codes = ood_codes(r, r.relu())
    names = r.class_names(codes.labels[ids])
    hits = [Hit(rank, float(s), int(i), r.dataset.paths[int(codes.index[i])], name)
            for rank, (i, s, name) in enumerate(zip(ids, scores, names, strict=True), 1)]
    if why:
        _why_figure(searcher, query, r.images(codes.index[ids]), hits, method, why)
    return hits


def _why_figure(searcher: PooledSearch, query: np.ndarray, images: np.ndarray, hits: list[Any],
                method: str, path: str) -> None:
    """The ``--why`` PNG (:func:`neuralcodes.figures.plot_why`): per hit, the query's and the
    hit's cells coloured by their share of the score."""
    from neuralcodes.figures import WhyRow, plot_why

    rows = []
    for hit, image in zip(hits, images, strict=True):
        gq, gh, score = searcher.explain(query, image, method)
        rows.append(WhyRow(image, gq, gh, score, f"#{hit.rank} {hit.label or ''}".strip()))
    cells = rows[0].query_share.shape[0] if rows else 0
    plot_why(query, rows, path, title=f"Why similar: {method} of the {MAP} map "
             f"({cells}x{cells} cells)\ncolour: each cell's share of the score, from the "
             "smallest share on this sheet to the largest")
