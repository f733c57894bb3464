"""Measured differences between the layers' retrievals (for the report): precision, colour
similarity of query and results against two baselines, sparsity, and how much the top-k of the
first queries change from layer to layer."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from neuralcodes.retrieval.codes import CodeSet
from neuralcodes.retrieval.metrics import RankingMetrics

COLOUR_BINS = 4  # per channel: a 64-bin joint RGB histogram
BASELINE_PAIRS = 5  # random / same-class partners drawn per query for the baselines


def colour_histograms(images: np.ndarray, bins: int = COLOUR_BINS) -> np.ndarray:
    """Joint RGB histograms (N, bins**3), each summing to 1."""
    q = (np.asarray(images, dtype=np.uint16) * bins) >> 8
    cell = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    flat = cell.reshape(len(images), -1).astype(np.int64)
    flat += np.arange(len(images))[:, None] * bins**3
    hist = np.bincount(flat.ravel(), minlength=len(images) * bins**3)
    return hist.reshape(len(images), bins**3) / flat.shape[1]


def _intersection(hist: np.ndarray, partners: np.ndarray, rows: np.ndarray | None = None
                  ) -> float | None:
    """Mean histogram intersection of each query (row i) with its ``partners[i]``, over
    ``rows`` (default: all); None when no row is left."""
    queries = np.arange(len(partners))
    if rows is not None:
        queries, partners = queries[rows], partners[rows]
    if len(queries) == 0:
        return None
    return float(np.minimum(hist[queries, None], hist[partners]).sum(axis=-1).mean())


def _same_class_partners(labels: np.ndarray, pairs: int, rng: np.random.Generator
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``pairs`` random other members of each item's class (with replacement), and which items
    have any (singleton classes have none)."""
    n = len(labels)
    order = np.argsort(labels, kind="stable")
    ranked = labels[order]
    start = np.searchsorted(ranked, labels, "left")
    count = np.searchsorted(ranked, labels, "right") - start
    where = np.empty(n, np.int64)
    where[order] = np.arange(n)  # each item's place in the class-sorted order
    pos = start[:, None] + rng.integers(0, np.maximum(count - 1, 1)[:, None], (n, pairs))
    pos += pos >= where[:, None]  # skip the item itself
    return order[np.minimum(pos, n - 1)], count > 1


def layer_evidence(codes: CodeSet, metrics: dict[str, RankingMetrics], images: np.ndarray,
                   n_queries: int = 10, seed: int = 0) -> dict[str, Any]:
    """What differs between the layers' retrievals, with the baselines to judge it by.

    Colour similarity is the mean histogram intersection (1 = identical colour distribution)
    between every query and its top-k results; its baselines, repeated beside every layer, are
    the same measure for random pairs (any two ood images) and for same-class pairs (two ood
    images of one class, no retrieval involved). Sparsity is the share of activations that are
    zero after ReLU (<= 0 before it).
    """
    hist = colour_histograms(images)
    n = len(codes)
    rng = np.random.default_rng(seed)
    others = (np.arange(n)[:, None] + rng.integers(1, max(n, 2), (n, BASELINE_PAIRS))) % n
    same, has_same = _same_class_partners(np.asarray(codes.labels), BASELINE_PAIRS, rng)
    baseline = {"random_pairs": _intersection(hist, others),
                "same_class_pairs": _intersection(hist, same, has_same)}
    per_layer = {}
    for layer, m in metrics.items():
        x = codes.layers[layer]
        p5 = m.precision.get(5)
        per_layer[layer] = {
            "dims": int(x.shape[1]), "map": m.map,
            "p@5": None if p5 is None else float(p5.mean()),
            "colour_similarity": _intersection(hist, m.top),
            "colour_similarity_random_pairs": baseline["random_pairs"],
            "colour_similarity_same_class_pairs": baseline["same_class_pairs"],
            "sparsity": float((x <= 0).mean()),
        }
    first = {layer: m.top[:n_queries] for layer, m in metrics.items()}
    changed, overlap = {}, {}
    for a, b in itertools.combinations(first, 2):
        sets = [(set(x), set(y)) for x, y in zip(first[a], first[b], strict=True)]
        changed[f"{a}-{b}"] = sum(x != y for x, y in sets)
        overlap[f"{a}-{b}"] = float(np.mean([len(x & y) for x, y in sets]))
    top_k = next(iter(metrics.values())).top.shape[1] if metrics else 0
    return {
        "relu": codes.relu, "n_queries": n, "first_queries": n_queries, "top_k": top_k,
        "baseline_pairs_per_query": BASELINE_PAIRS,
        "per_layer": per_layer,
        "colour_similarity_baseline": baseline,
        "top_k_changed": changed,  # of the first queries, those whose top-k sets differ
        "top_k_overlap": overlap,
    }
