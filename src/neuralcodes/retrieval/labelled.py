"""Retrieval measured on a labelled collection: an index of a folder whose images sit in class
subfolders (``neuralcodes retrieval RUN --index NAME``).

Protocol: every indexed image in a class subfolder queries all the others (itself excluded);
relevant = the same first-level subfolder. Images directly in the folder's root have no class:
they are left out (counted). Measured per layer on the stored codes (what ``search`` ranks:
centred, layer 5 by PCA; exact ranking, never the FAISS approximation): mAP, mAP@k, P@k and
recall@k (definitions: :mod:`.metrics`), each with its exact chance level (a random ranking) and
the paired bootstrap interval of its distance to chance over the queries, and the mAP
difference of every pair of layers. Not per method: the methods study (pooled conv descriptors,
whitening, re-ranking) needs conv feature maps, which an index does not store.

Written into the index folder, each file recording its lineage (the index's fingerprint, its
generation and file list, the k): ``retrieval.json`` and ``retrieval.png`` here, the report
by :mod:`neuralcodes.report.collection`; recomputed when the index changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes import lineage
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json, write_json
from neuralcodes.retrieval.collection import FolderIndex, data_file
from neuralcodes.retrieval.metrics import (
    RankingMetrics,
    chance_average_precision,
    paired_bootstrap,
    relevant_counts,
    self_retrieval_metrics,
)
from neuralcodes.retrieval.scores import PRECISION_KS, precision_ks
from neuralcodes.retrieval.search import open_index
from neuralcodes.retrieval.study import layer_comparisons
from neuralcodes.runs import TrainedRun
from neuralcodes.text import printable

#: The files of a collection's measurement, inside its index folder.
RESULT, FIGURE, REPORT_MD, REPORT_HTML = "retrieval.json", "retrieval.png", "report.md", \
    "report.html"
#: The measures: key (before the ``@k``) -> the name tables and figures show.
MEASURES = {"map": "mAP", "p": "P", "r": "recall"}


def class_labels(names: list[bytes]) -> np.ndarray:
    """The class of each indexed file: its first-level subfolder ("" for a file in the root)."""
    return np.array([n.split(b"/", 1)[0].decode("utf-8", "surrogateescape") if b"/" in n
                     else "" for n in names], dtype=object)


def measure_names(ks: tuple[int, ...]) -> dict[str, str]:
    """Key -> name of each measure: ``map`` (mAP), then ``map@k``, ``p@k``, ``r@k`` per k."""
    return {"map": MEASURES["map"]} | {f"{m}@{k}": f"{name}@{k}" for m, name in MEASURES.items()
                                       for k in ks}


def per_query(m: RankingMetrics, key: str) -> np.ndarray:
    """One measure's per-query values (NaN: a query without a relevant image)."""
    if key == "map":
        return m.ap
    what, k = key.split("@")
    return {"map": m.ap_at, "p": m.precision, "r": m.recall}[what][int(k)]


def chance_per_query(labels: np.ndarray, key: str) -> np.ndarray:
    """The expected value of a measure for each query under a uniformly random ranking:
    AP and AP@k: :func:`~.metrics.chance_average_precision`; P@k: R/N; recall@k: k/N."""
    n, r = relevant_counts(labels, None)
    if key == "map":
        return chance_average_precision(n, r)
    what, k = key.split("@")
    if what == "map":
        return chance_average_precision(n, r, int(k))
    if what == "p":
        return r / n
    return np.where(r > 0, int(k) / n, np.nan)


def _mean(values: np.ndarray, key: str) -> float:
    """P@k: the mean over every query; the others over the queries with a relevant image."""
    return float(np.mean(values) if key.startswith("p@") else np.nanmean(values))


def collection_fingerprint(folder: FolderIndex, ks: tuple[int, ...]) -> lineage.Fingerprint:
    gen = int(folder.manifest["generation"])
    entries = hashlib.sha256((folder.folder / data_file(gen, "entries")).read_bytes())
    return lineage.collection_fingerprint(folder.made_by, entries.hexdigest()[:16], gen, ks)


def _labelled(folder: FolderIndex) -> tuple[np.ndarray, np.ndarray]:
    """(row mask, labels) of the images in class subfolders; refused in one line unless there
    are at least two classes and a class of two images."""
    labels = class_labels(folder.entries.names)
    mask = labels != ""
    classes, counts = np.unique(labels[mask].astype(str), return_counts=True)
    name = printable(folder.folder.name)
    if len(classes) < 2:
        found = "no class subfolder" if not len(classes) else f"one class ({classes[0]})"
        raise NeuralCodesError(
            f"{name}: retrieval needs images in at least two class subfolders of "
            f"{printable(folder.root)} (found {found}); labels come from the first subfolder")
    if counts.max() < 2:
        raise NeuralCodesError(f"{name}: every class holds one image: no query has a relevant "
                               "image")
    return mask, labels[mask].astype(str)


def measure_collection(run: TrainedRun, index: str | Path, *, force: bool = False
                       ) -> tuple[Path, dict[str, Any]]:
    """Measure the labelled index ``index`` (name or folder) of ``run`` into ``retrieval.json``
    and ``retrieval.png``, or read them when they record the index as it is now: (the index
    folder, the result with its ``made_by``)."""
    from neuralcodes.figures import plot_collection

    folder = open_index(index, run)
    mask, labels = _labelled(folder)
    ks = precision_ks(len(labels), PRECISION_KS)
    fp = collection_fingerprint(folder, ks)
    out = folder.folder
    if not lineage.needs_run("collection", [out / RESULT, out / FIGURE], fp, force=force):
        return out, read_json(out / RESULT)
    rows = np.flatnonzero(mask)
    metrics = {layer: self_retrieval_metrics(np.asarray(codes[rows], np.float32), labels, ks=ks,
                                             progress=run.progress, desc=f"mAP layer {layer}")
               for layer, codes in folder.layers.items()}
    result = lineage.stamped(_result(folder, labels, ks, metrics), fp)
    result["unlabelled"] = int((~mask).sum())
    plot_collection(result, out / FIGURE, metadata=lineage.png_metadata(fp))
    write_json(out / RESULT, result)
    return out, result


def _result(folder: FolderIndex, labels: np.ndarray, ks: tuple[int, ...],
            metrics: dict[str, RankingMetrics]) -> dict[str, Any]:
    names = measure_names(ks)
    keys = list(names)
    chance = {key: chance_per_query(labels, key) for key in keys}
    layers = {}
    for layer, m in metrics.items():
        values = {key: per_query(m, key) for key in keys}
        layers[layer] = {key: _mean(values[key], key) for key in keys} | {
            "above_chance": {key: paired_bootstrap(values[key], chance[key]).to_json()
                             for key in keys}}
    pairs, best = layer_comparisons(metrics)
    classes, counts = np.unique(labels, return_counts=True)
    return {"index": folder.folder.name, "root": folder.root, "relu": folder.relu,
            "n_images": len(labels), "n_classes": len(classes),
            "class_sizes": {str(c): int(n) for c, n in zip(classes, counts, strict=True)},
            "n_queries_with_relevant": int(np.sum(~np.isnan(next(iter(metrics.values())).ap))),
            "ks": list(ks), "names": names,
            "chance": {key: _mean(chance[key], key) for key in keys},
            "layers": layers, "comparisons": pairs, "best_layer": best}
