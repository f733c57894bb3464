"""The methods study: every method of the registry measured on the ood self-retrieval, beside
the paper's codes, with the same statistics as the layer comparison.

Protocol (the assignment's): every ood image queries the other ood images, its own entry
excluded by index; AP over the full ranking; P@5, P@10. Everything a method fits or tunes comes
from in-domain images only:

1. descriptors (:mod:`.features`) of up to ``train_images`` training images (a fixed random
   sample), all validation images and all ood images, in one pass each;
2. GeM's p per conv map: the p of :data:`~.pooling.GEM_P_GRID` with the best self-retrieval
   mAP on the first ``gem_fit_images`` of those training images;
3. rows ``paper`` (layer5, fc6, fc7), ``pooling`` (MAC, SPoC, SPoC with the centring prior,
   GeM p = 3 and p fitted, R-MAC on conv5; MAC, SPoC, fitted GeM on conv3/conv4);
4. ``whitening``: PCA, PCA-whitening and learned whitening at 64/128/256 dimensions, fitted on
   the training descriptors, of fc6, fc7 and of the pooled descriptor with the best
   *validation* mAP; the shrinkage of PCA-whitening and learned whitening chosen on validation
   images at 128 dimensions;
5. ``reranking``: AQE, alpha-QE, DBA, k-reciprocal and diffusion on the descriptor (any row
   above) with the best validation mAP, each with its parameters tuned on validation images
   (:func:`~.reranking.tune`).

Every row carries mAP, P@5, P@10, ``diff`` = its mAP minus the reference's (the best of the
paper's codes on these queries) with the paired-bootstrap 95% interval (the project's
:func:`~neuralcodes.retrieval.metrics.paired_bootstrap`; ``significant``: the interval excludes
0), the validation mAP it was chosen by, and ``ms_per_query``: the time to score and rank one
query against the database with that method (its transform of the codes and its re-ranking
included; the forward pass and pooling, shared by all, are in ``seconds.extract``), and
``vs``: a learned whitening's difference to plain PCA of the same descriptor and size, a
re-ranking's to its input, with the same interval (None for the other rows).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.codes import DEFAULT_BATCH
from neuralcodes.retrieval.methods import FAMILIES, REGISTRY, FitData, get, pooling, reranking
from neuralcodes.retrieval.methods.features import (
    Features,
    extract_features,
    gem_name,
    paper_codes,
)
from neuralcodes.retrieval.methods.whitening import LearnedWhitening
from neuralcodes.retrieval.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    RankingMetrics,
    chance_map,
    chance_precision,
    paired_bootstrap,
)

log = logging.getLogger(__name__)

MAPS: tuple[str, ...] = ("conv3", "conv4", "conv5")
WHITEN_DIMS: tuple[int, ...] = (64, 128, 256)
#: The whitenings measured on each whitened descriptor (names in the registry).
WHITENINGS: tuple[str, ...] = ("pca", "pcaw", "lw")
TUNE_DIMS = 128
TRAIN_IMAGES = 5000
GEM_FIT_IMAGES = 2000
KS = (5, 10)
RERANKERS: tuple[str, ...] = ("aqe", "alpha-qe", "dba", "k-reciprocal", "diffusion")


@dataclass
class SplitImages:
    """uint8 images (N, 64, 64, 3) of one split with their class labels."""

    images: np.ndarray
    labels: np.ndarray


@dataclass
class _Row:
    name: str
    family: str
    metrics: RankingMetrics
    seconds: float
    params: dict[str, Any]
    val_map: float | None = None
    dims: int | None = None


def run_split_images(trained: Any, split: str, limit: int | None = None) -> SplitImages:
    """A trained run's images of ``split`` (train: a fixed random sample of ``limit``)."""
    index = np.asarray(getattr(trained.splits, split), np.int64)
    if limit is not None and len(index) > limit:
        index = np.sort(index[np.random.default_rng(0).choice(len(index), limit,
                                                              replace=False)])
    return SplitImages(trained.images(index),
                       np.asarray(trained.dataset.labels[index], np.int64))


def run_methods_study(trained: Any, *, train_images: int = TRAIN_IMAGES, **kwargs: Any
                      ) -> dict[str, Any]:
    """:func:`methods_study` on a :class:`~neuralcodes.runs.TrainedRun`'s own splits, with its
    ``retrieval.relu`` codes and its precision."""
    cfg = trained.config
    data = {"train": run_split_images(trained, "train", train_images),
            "val": run_split_images(trained, "val"), "ood": run_split_images(trained, "ood")}
    kwargs.setdefault("relu", cfg.retrieval.relu)
    kwargs.setdefault("precision", cfg.train.precision)
    return methods_study(trained.model, data, device=trained.device, **kwargs)


def methods_study(
    model: torch.nn.Module, data: dict[str, SplitImages], *, relu: bool = False,
    maps: Sequence[str] = MAPS, dims: Sequence[int] = WHITEN_DIMS,
    gem_fit_images: int = GEM_FIT_IMAGES, rerankers: Sequence[str] = RERANKERS,
    families: Sequence[str] = FAMILIES, device: torch.device | None = None,
    precision: str = "fp32", batch_size: int = DEFAULT_BATCH, progress: bool = False,
) -> dict[str, Any]:
    """The study's table (see the module docstring) as a JSON-able dict: ``rows`` plus the
    chance levels, the reference, what was fitted on what, and the time of each phase.
    ``families``: those of :data:`FAMILIES` to measure (the paper's rows always are)."""
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise NeuralCodesError(f"unknown method famil{'ies' if len(unknown) > 1 else 'y'} "
                               f"{sorted(unknown)} (choose from {', '.join(FAMILIES)})")
    if "pooling" not in families:
        maps = ()
    for split in ("train", "val", "ood"):
        if split not in data or len(data[split].labels) < 2:
            raise NeuralCodesError(f"the methods study needs at least 2 {split} images")
    start = time.perf_counter()
    kw = {"relu": relu, "device": device, "precision": precision, "batch_size": batch_size,
          "progress": progress}
    n_fit = min(gem_fit_images, len(data["train"].labels))
    head, val, ood, gem_p, gem_fit = _describe(model, data, maps, n_fit, kw)
    extract_seconds = time.perf_counter() - start

    rows: list[_Row] = []
    measure = _Measure(ood, val)
    for name in paper_codes():
        rows.append(measure(name, "paper", lambda x: x, name))
    for name in _pooled_names(maps):
        params = {"p": gem_p[name.split("/")[0]]} if name.endswith("gem-fit") else {}
        rows.append(measure(name, "pooling", lambda x: x, name, params))
    pooled_rows = [r for r in rows if r.family == "pooling"]
    whitened = ["fc6", "fc7"]
    if pooled_rows:
        whitened.append(max(pooled_rows, key=lambda r: r.val_map or 0).name)
    began = time.perf_counter()
    # the training images beyond GeM's: only the descriptors that are whitened or re-ranked
    train = _train_features(model, data["train"], head, whitened, gem_p, kw)
    extract_seconds += time.perf_counter() - began
    fits = {b: FitData(train.codes[b], train.labels, "train") for b in whitened}  # one PCA each
    if "whitening" in families:
        for base in whitened:
            rows += _whitening_rows(measure, fits[base], val, base, dims)
    chosen = max(rows, key=lambda r: r.val_map or 0)
    if "reranking" in families:
        rows += _rerank_rows(measure, train, fits, val, chosen, rerankers)
    return _table(rows, ood, {
        "relu": relu, "n_queries": len(ood), "maps": list(maps), "families": list(families),
        "fit": {"train_images": len(train), "val_images": len(val),
                "gem_fit_images": n_fit,
                "gem_p": gem_p, "gem_train_map": gem_fit},
        "whitened": whitened if "whitening" in families else [],
        "reranked": chosen.name if "reranking" in families else None,
        "seconds": {"extract": round(extract_seconds, 2)}, "start": start})


class _Measure:
    """Measures one method on the ood queries (and on the validation images, by which the
    study chooses)."""

    def __init__(self, ood: Features, val: Features) -> None:
        self.ood, self.val = ood, val

    def __call__(self, name: str, family: str, transform: Callable[[np.ndarray], np.ndarray],
                 base: str, params: dict[str, Any] | None = None, *, dims: int | None = None,
                 rerank: Callable[..., np.ndarray] | None = None) -> _Row:
        val = transform(self.val.codes[base])
        val_map = _metrics(val, self.val.labels, rerank, ks=()).map
        t = time.perf_counter()
        m = _metrics(transform(self.ood.codes[base]), self.ood.labels, rerank, ks=KS)
        return _Row(name, family, m, time.perf_counter() - t, params or {}, val_map, dims)


def _pooled_names(maps: Sequence[str]) -> list[str]:
    """The pooling rows: every pooling on the last map, MAC, SPoC and fitted GeM on the
    others."""
    return [f"{m}/{p}" for m in maps for p in (
        ("mac", "spoc", "spoc-centre", "gem-p3", "gem-fit", "rmac") if m == maps[-1]
        else ("mac", "spoc", "gem-fit"))]


def planned_rows(families: Sequence[str] = FAMILIES, maps: Sequence[str] = MAPS,
                 dims: Sequence[int] = WHITEN_DIMS, rerankers: Sequence[str] = RERANKERS) -> int:
    """How many rows (methods, the reference among them) :func:`methods_study` measures with
    these arguments: the count the plan announces before the study runs."""
    pooled = _pooled_names(maps) if "pooling" in families else []
    whitened = 2 + bool(pooled) if "whitening" in families else 0
    return (len(paper_codes()) + len(pooled) + whitened * len(WHITENINGS) * len(dims)
            + (len(rerankers) if "reranking" in families else 0))


def _describe(model: torch.nn.Module, data: dict[str, SplitImages], maps: Sequence[str],
              n_fit: int, kw: dict[str, Any]
              ) -> tuple[Features, Features, Features, dict[str, float], dict[str, Any]]:
    """GeM's p fitted on the first ``n_fit`` training images (their descriptors with the whole
    p grid), then the validation and ood descriptors of every row."""
    train = data["train"]
    rows = [n for n in _pooled_names(maps) if not n.endswith("gem-fit")]
    head = extract_features(model, train.images[:n_fit], train.labels[:n_fit], "train",
                            gem_ps={m: pooling.GEM_P_GRID for m in maps},
                            only={*rows, *(gem_name(m, p) for m in maps
                                           for p in pooling.GEM_P_GRID)}, **kw)
    gem_p, gem_fit = {}, {}
    for m in maps:
        grid = {p: head.codes[gem_name(m, p)] for p in pooling.GEM_P_GRID}
        gem_p[m], scores = pooling.fit_gem_p(grid, head.labels)
        gem_fit[m] = {f"{p:g}": s for p, s in scores.items()}
    ps = {m: sorted({3.0, gem_p[m]}) for m in maps}
    only = {_stored(n, gem_p) for n in _pooled_names(maps)}
    val, ood = (extract_features(model, data[s].images, data[s].labels, s, gem_ps=ps,
                                 codes=tuple(paper_codes()), only=only, **kw)
                for s in ("val", "ood"))
    for feats in (head, val, ood):  # the fitted GeM under its own name
        for m in maps:
            feats.codes[f"{m}/gem-fit"] = feats.codes[gem_name(m, gem_p[m])]
    return head, val, ood, gem_p, gem_fit


def _stored(name: str, gem_p: dict[str, float]) -> str:
    """The name :func:`extract_features` stores a pooled row's descriptor under."""
    layer, _, kind = name.partition("/")
    return gem_name(layer, gem_p[layer]) if kind == "gem-fit" else name


def _train_features(model: torch.nn.Module, train: SplitImages, head: Features,
                    bases: Sequence[str], gem_p: dict[str, float], kw: dict[str, Any]
                    ) -> Features:
    """The training descriptors of ``bases`` (fc6, fc7, a pooled one): ``head``'s, completed
    by those of the remaining training images."""
    n_fit = len(head)
    codes = {b: head.codes[b] for b in bases}
    if n_fit < len(train.labels):
        pooled = [b for b in bases if "/" in b]
        stored = {_stored(b, gem_p) for b in pooled}
        ps = {b.split("/")[0]: [gem_p[b.split("/")[0]]] for b in pooled}
        rest = extract_features(model, train.images[n_fit:], train.labels[n_fit:], "train",
                                codes=tuple(b for b in bases if b in paper_codes()),
                                gem_ps=ps, only=stored, **kw)
        for b in bases:
            codes[b] = np.concatenate([codes[b], rest.codes[_stored(b, gem_p)
                                                            if "/" in b else b]])
    return Features(codes, train.labels, "train")


def _metrics(codes: np.ndarray, labels: np.ndarray, rerank: Callable[..., np.ndarray] | None,
             ks: Sequence[int]) -> RankingMetrics:
    ks = tuple(k for k in ks if k <= len(labels) - 1)
    scores = codes @ codes.T if rerank is None else reranking.self_rerank(rerank, codes)
    return reranking.score_metrics(scores, labels, ks=ks)


def _whitening_rows(measure: _Measure, fit: FitData, val: Features, base: str,
                    dims: Sequence[int]) -> list[_Row]:
    """PCA, PCA-whitening and learned whitening of ``base`` fitted on its training codes
    ``fit`` (whose PCA and decompositions every size shares)."""
    rows = []
    cap = min(fit.codes.shape[1], len(fit.codes) - 1)
    sizes = [d for d in dims if d <= cap] or [cap]  # shorter codes: whitened at their size
    n, d = fit.codes.shape
    fit.pca(min(max([*sizes, LearnedWhitening.max_input]), d, n - 1))  # one fit serves all
    for kind in WHITENINGS:
        spec = get(kind, "whitening")
        params: dict[str, Any] = {}
        if spec.grid and sizes:
            tune_at = min(sizes, key=lambda d: abs(d - TUNE_DIMS))
            trials = []
            for s in spec.grid["shrinkage"]:
                w = spec.fn(tune_at, shrinkage=s).fit(fit)
                trials.append((_metrics(w.transform(val.codes[base]), val.labels, None,
                                        ()).map, -s, s))
            params = {"shrinkage": max(trials)[2]}
        for d in sizes:
            w = spec.fn(d, **params).fit(fit)
            rows.append(measure(f"{base}+{kind}{d}", "whitening", w.transform, base, params,
                                dims=d))
    return rows


def _rerank_rows(measure: _Measure, train: Features, fits: dict[str, FitData], val: Features,
                 chosen: _Row, names: Sequence[str]) -> list[_Row]:
    """Re-ranking of the chosen descriptor (with its whitening, refitted the same way)."""
    base, _, kind = chosen.name.partition("+")
    transform: Callable[[np.ndarray], np.ndarray] = lambda x: x  # noqa: E731
    if kind:
        dims = chosen.dims or 0
        spec = get(kind.rstrip("0123456789"), "whitening")
        fit = fits.get(base) or FitData(train.codes[base], train.labels, "train")
        w = spec.fn(dims, **chosen.params).fit(fit)
        transform = w.transform
    tune_data = FitData(transform(val.codes[base]), val.labels, "val")
    rows = []
    for name in names:
        spec = get(name, "reranking")
        try:
            params, _ = reranking.tune(spec.fn, spec.grid, tune_data)
        except NeuralCodesError as e:  # too few validation images for any of its parameters
            log.warning(f"methods study: {name} left out: {e}")
            continue
        rows.append(measure(f"{chosen.name}+{name}", "reranking", transform, base, params,
                            dims=chosen.dims, rerank=_bind(spec.fn, params)))
    return rows


def _bind(fn: Callable[..., np.ndarray], params: dict[str, Any]) -> Callable[..., np.ndarray]:
    def bound(q: np.ndarray, d: np.ndarray, ex: np.ndarray | None = None) -> np.ndarray:
        return fn(q, d, ex, **params)
    return bound


def _table(rows: list[_Row], ood: Features, meta: dict[str, Any]) -> dict[str, Any]:
    paper = [r for r in rows if r.family == "paper"]
    reference = max(paper, key=lambda r: r.metrics.map)
    by_name = {r.name: r for r in rows}
    out_rows = []
    for r in rows:
        d = paired_bootstrap(r.metrics.ap, reference.metrics.ap).to_json()
        own = by_name.get(_own_baseline(r.name))
        vs = (None if own is None else
              {"method": own.name, **paired_bootstrap(r.metrics.ap, own.metrics.ap).to_json()})
        summary = r.metrics.summary()
        out_rows.append({
            "method": r.name, "family": r.family, "dims": r.dims or
            int(ood.codes[r.name.split("+")[0]].shape[1]), "params": r.params,
            "map": summary["map"], **{f"p@{k}": summary.get(f"p@{k}") for k in KS},
            "val_map": r.val_map, "diff": d["diff"], "ci95": d["ci95"],
            "significant": d["significant"], "vs": vs,
            "ms_per_query": round(1000 * r.seconds / len(ood), 4)})
    start = meta.pop("start")
    meta["seconds"]["total"] = round(time.perf_counter() - start, 2)
    meta["seconds"]["methods"] = round(meta["seconds"]["total"] - meta["seconds"]["extract"], 2)
    return {**meta, "reference": reference.name,
            "chance_map": chance_map(ood.labels),
            **{f"chance_p@{k}": chance_precision(ood.labels, k) for k in KS
               if k <= len(ood) - 1},
            "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED,
                          "confidence": 0.95, "unit": "query"},
            "methods": {n: {"family": s.family, "description": s.description}
                        for n, s in REGISTRY.items()},
            "rows": out_rows}


def _own_baseline(name: str) -> str | None:
    """The row a method is compared with besides the reference: a learned whitening with
    plain PCA at the same size (the paper's Sec. 5 claim), a re-ranking with its input."""
    head, _, last = name.rpartition("+")
    if last.startswith("lw"):
        return f"{head}+pca{last[2:]}"
    return head if last in RERANKERS else None


def write_methods_figure(table: dict[str, Any], path: str | Path,
                         metadata: dict[str, str] | None = None) -> Path:
    """The study's figure (:func:`neuralcodes.figures.plot_methods`)."""
    from neuralcodes.figures import plot_methods

    return plot_methods(table["rows"], path, chance=table["chance_map"],
                        reference=table["reference"], metadata=metadata)
