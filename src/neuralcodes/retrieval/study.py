"""The ood retrieval study of a trained run (assignment Task 3): mAP, figures, layer evidence
and the PCA study, with chance levels and bootstrap intervals.

Protocol: every ood image queries the other ood images (its own entry is excluded by index,
not by assuming it ranks first: Tiny ImageNet has duplicates). Similarity is the dot product of
unit-length codes (cosine); ties are broken by database index (lowest first). Average precision
is computed over the full ranking (see :mod:`neuralcodes.retrieval.metrics`).

Outputs of :func:`run_study` in ``runs/<name>/retrieval/`` (each step is skipped when its
files record the fingerprint it would write now, see :mod:`neuralcodes.lineage`;
``force=True`` redoes it). Layers are ``retrieval.layers`` of the config. Every JSON file has
a ``made_by`` key, every PNG a ``made_by`` text chunk.

``map.json``::

    {"pre" | "post": {layer: {"map", "p@5", "p@10", "n_queries", "seconds"}},
     "chance_map": float,      # E[mAP] of uniformly random rankings (same labels, same protocol)
     "chance_p@5": float, "chance_p@10": float,   # E[precision@k] of random rankings
     "pairs": {"pre" | "post": [{"a": "5", "b": "6", "diff": mAP_a - mAP_b,
                                 "ci95": [lo, hi], "significant": bool}, ...]},
     "best_layer": {"pre" | "post": layer or null},   # null: no layer beats all the others
                                                      # significantly
     "bootstrap": {"resamples": 2000, "seed": 0, "confidence": 0.95, "unit": "query"}}

    ``p@k`` (and ``chance_p@k``) is null when the ood database has fewer than k images.
    Intervals: paired percentile bootstrap over the queries (the same resampled queries for
    both layers); ``significant``: the interval excludes 0.

``top<k>.json``: the first ``figure_queries`` queries and their top ``k`` per layer (ids,
classes, scores; ``k = retrieval.k``). ``top<k>_layer<L>.png`` per layer and
``top<k>_layers.png``: query + top-k figures.

``evidence.json`` (:func:`~neuralcodes.retrieval.evidence.layer_evidence`)::

    {"relu", "n_queries", "first_queries", "top_k", "baseline_pairs_per_query",
     "per_layer": {layer: {"dims", "map", "p@5", "colour_similarity",
                           "colour_similarity_random_pairs",
                           "colour_similarity_same_class_pairs", "sparsity"}},
     "colour_similarity_baseline": {"random_pairs", "same_class_pairs"},
     "top_k_changed": {"5-6": n, ...}, "top_k_overlap": {"5-6": mean, ...}}  # k = top_k

``pca.json``, ``pca.png``: mAP of PCA / PCA-whitened codes (fitted on in-domain train codes)::

    {"relu", "fit": {"split": "train", "images": n},
     "table": [{"layer", "dims" (int or "full"), "whiten", "map", "p@5",
                "diff_vs_full", "ci95", "significant"}]}   # the last three null on "full" rows

Figures, top<k>.json, evidence and PCA use the run's default codes (``retrieval.relu`` in its
config, pre-ReLU by default) unless ``relu`` is given; map.json has both variants.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from neuralcodes import features, lineage
from neuralcodes.errors import NeuralCodesError
from neuralcodes.figures import (
    Result,
    RetrievalRow,
    plot_pca,
    plot_retrieval,
    plot_retrieval_layers,
)
from neuralcodes.files import read_json, write_json
from neuralcodes.retrieval.codes import (
    VARIANT,
    CodeSet,
    codes_fingerprint,
    extract_codes,
    ood_codes,
)
from neuralcodes.retrieval.evidence import layer_evidence
from neuralcodes.retrieval.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    RankingMetrics,
    paired_bootstrap,
    self_retrieval_metrics,
)
from neuralcodes.retrieval.pca import PCA_FIT_IMAGES, pca_study
from neuralcodes.retrieval.scores import PRECISION_KS, map_row, precision_ks, retrieval_chance
from neuralcodes.runs import TrainedRun

log = logging.getLogger(__name__)


def evaluate_codes(codes: CodeSet, ks: Sequence[int] = PRECISION_KS, top_k: int = 5,
                   progress: bool = False, layers: Sequence[str] | None = None
                   ) -> dict[str, RankingMetrics]:
    """Self-retrieval metrics (each image queries the others) per layer (default: all);
    precision@k only for the ``ks`` the database (N - 1 images) can provide."""
    usable = precision_ks(len(codes), ks)
    if usable != tuple(ks):
        log.warning("precision@%s not measured: the database has only %d images",
                    ", ".join(str(k) for k in ks if k not in usable), len(codes) - 1)
    return {layer: self_retrieval_metrics(x, codes.labels, ks=usable, top_k=top_k,
                                          progress=progress, desc=f"mAP layer {layer}")
            for layer, x in codes.layers.items() if layers is None or layer in layers}


def layer_comparisons(metrics: dict[str, RankingMetrics]) -> tuple[list[dict[str, Any]],
                                                                    str | None]:
    """mAP difference of every pair of layers with its paired bootstrap interval, and the best
    layer: the one with the highest mAP when it beats every other layer significantly."""
    pairs, diffs = [], {}
    for a, b in itertools.combinations(metrics, 2):
        d = paired_bootstrap(metrics[a].ap, metrics[b].ap)
        diffs[a, b], diffs[b, a] = d.significant, d.significant
        pairs.append({"a": a, "b": b, **d.to_json()})
    top = max(metrics, key=lambda layer: metrics[layer].map)
    beats_all = all(diffs[top, other] for other in metrics if other != top)
    return pairs, (top if beats_all and len(metrics) > 1 else None)


def run_study(run: TrainedRun, *, relu: bool | None = None,
              pca_images: int = PCA_FIT_IMAGES, force: bool = False) -> dict[str, Any]:
    """The whole retrieval study of a trained run (see the module docstring for the files).

    The run's config (its retrieval settings, device and precision) rules; map.json always
    holds both pre- and post-ReLU codes; ``relu`` (None: the config's ``retrieval.relu``)
    picks the codes of the figures, the evidence and the PCA study. Each step is skipped
    exactly when its files record the fingerprint it would write now
    (:mod:`neuralcodes.lineage`: the codes' weights and the retrieval settings it uses),
    unless ``force``; otherwise one line says why it reruns. Returns the contents of the JSON
    files.
    """
    if pca_images < 2:
        raise NeuralCodesError(f"the PCA needs at least 2 training images, got {pca_images}")
    main, progress = run.relu(relu), run.progress
    cfg = run.config.retrieval
    layers = [layer for layer in features.code_names() if layer in cfg.layers]
    codes_fp = {v: codes_fingerprint(run, "ood", v) for v in (False, True)}
    result: dict[str, Any] = {}
    metrics: dict[bool, dict[str, RankingMetrics]] = {}
    seconds: dict[bool, float] = {}

    def metrics_of(v: bool) -> dict[str, RankingMetrics]:
        if v not in metrics:
            codes = ood_codes(run, v)
            start = time.perf_counter()
            metrics[v] = evaluate_codes(codes, PRECISION_KS, cfg.k, progress, cfg.layers)
            seconds[v] = (time.perf_counter() - start) / len(metrics[v])
        return metrics[v]

    fp = lineage.map_fingerprint(codes_fp, layers)
    if lineage.needs_run("mAP", run.dir.map_json, fp, force=force):
        maps: dict[str, Any] = retrieval_chance(ood_codes(run, False).labels)
        maps["bootstrap"] = {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED,
                             "confidence": 0.95, "unit": "query"}
        for v in (False, True):
            m = metrics_of(v)
            maps[VARIANT[v]] = {layer: {**map_row(x), "seconds": round(seconds[v], 3)}
                                 for layer, x in m.items()}
            pairs, best = layer_comparisons(m)
            maps.setdefault("pairs", {})[VARIANT[v]] = pairs
            maps.setdefault("best_layer", {})[VARIANT[v]] = best
        write_json(run.dir.map_json, lineage.stamped(maps, fp))
    result["map"] = read_json(run.dir.map_json)

    codes = ood_codes(run, main)
    first = np.arange(min(cfg.figure_queries, len(codes)))
    top_json = run.dir.top_json(cfg.k)
    figure_paths = [run.dir.top_figure(cfg.k, layer) for layer in layers]
    figure_paths.append(run.dir.top_figure(cfg.k))
    fp = lineage.figures_fingerprint(codes_fp[main], layers, cfg.k, cfg.figure_queries)
    if lineage.needs_run("figures", [top_json, *figure_paths], fp, force=force):
        _write_figures(run, codes, metrics_of(main), first, fp)
    result["top"] = read_json(top_json)
    result["figures"] = [str(p) for p in figure_paths]

    fp = lineage.evidence_fingerprint(codes_fp[main], layers, cfg.k, cfg.figure_queries)
    if lineage.needs_run("evidence", run.dir.evidence_json, fp, force=force):
        evidence = layer_evidence(codes, metrics_of(main), run.images(codes.index), len(first))
        write_json(run.dir.evidence_json, lineage.stamped(evidence, fp))
    result["evidence"] = read_json(run.dir.evidence_json)

    fp = lineage.pca_fingerprint(codes_fp[main], layers, cfg.pca_dims, pca_images)
    if lineage.needs_run("PCA study", [run.dir.pca_json, run.dir.pca_plot], fp, force=force):
        train = _train_codes(run, main, pca_images, layers)
        table = pca_study(train, codes, cfg.pca_dims, progress)
        plot_pca(table, run.dir.pca_plot, chance=result["map"].get("chance_map"),
                 metadata=lineage.png_metadata(fp),
                 title=f"PCA-compressed {VARIANT[main]}-ReLU codes (fitted on train)")
        write_json(run.dir.pca_json, lineage.stamped({"relu": main, "fit": {
            "split": "train", "images": len(next(iter(train.values())))}, "table": table}, fp))
    result["pca"] = read_json(run.dir.pca_json)
    return result


def _train_codes(run: TrainedRun, relu: bool, n_images: int, layers: Sequence[str]
                 ) -> dict[str, np.ndarray]:
    """Codes of up to ``n_images`` in-domain training images (a fixed random sample)."""
    train = np.asarray(run.splits.train)
    if len(train) < 2:
        raise NeuralCodesError(f"the PCA needs at least 2 training images; the run has "
                               f"{len(train)}")
    pick = np.random.default_rng(0).choice(len(train), min(n_images, len(train)), replace=False)
    images = run.images(np.sort(train[pick]))
    return extract_codes(run.model, images, tuple(layers), relu, device=run.device,
                         precision=run.precision, progress=run.progress)


def _rows(run: TrainedRun, codes: CodeSet, m: RankingMetrics, first: np.ndarray
          ) -> list[RetrievalRow]:
    ids = np.concatenate([first, m.top[first].ravel()])
    images = dict(zip(ids.tolist(), run.images(codes.index[ids]), strict=True))
    names = run.class_names(codes.labels)
    rows = []
    for q in first:
        results = [Result(images[int(j)], float(s), names[j], bool(codes.labels[j]
                                                                    == codes.labels[q]))
                   for j, s in zip(m.top[q], m.top_scores[q], strict=True)]
        rows.append(RetrievalRow(images[int(q)], names[q], results))
    return rows


def _write_figures(run: TrainedRun, codes: CodeSet, metrics: dict[str, RankingMetrics],
                   first: np.ndarray, fp: lineage.Fingerprint) -> dict[str, Any]:
    k = run.config.retrieval.k
    variant = f"{VARIANT[codes.relu]}-ReLU"
    meta = lineage.png_metadata(fp)
    rows = {layer: _rows(run, codes, m, first) for layer, m in metrics.items()}
    for layer, r in rows.items():
        plot_retrieval(r, run.dir.top_figure(k, layer), metadata=meta,
                       title=f"Layer {layer} ({variant} codes): top-{k} for the first "
                             f"{len(first)} ood queries")
    plot_retrieval_layers(rows, run.dir.top_figure(k), metadata=meta,
                          title=f"Top-{k} of the first {len(first)} ood queries per layer "
                                f"({variant} codes)")
    names = run.class_names(codes.labels)
    data = {"relu": codes.relu, "k": k, "queries": [
        {"position": int(q), "dataset_index": int(codes.index[q]), "class": names[q],
         "layers": {layer: [{"position": int(j), "dataset_index": int(codes.index[j]),
                             "class": names[j], "score": float(s),
                             "same_class": bool(codes.labels[j] == codes.labels[q])}
                            for j, s in zip(m.top[q], m.top_scores[q], strict=True)]
                    for layer, m in metrics.items()}}
        for q in first]}
    data = lineage.stamped(data, fp)
    write_json(run.dir.top_json(k), data)  # last: the figures are current when it is
    return data
