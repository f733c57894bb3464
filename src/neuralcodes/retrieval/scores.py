"""The numbers a run's results state beside its measurements, computed once: the retrieval study
writes them into ``map.json`` (:mod:`.study`), and the report (:mod:`neuralcodes.report`) and
the web app's results page (:mod:`neuralcodes.web.results`) both show them from here.

- Classification chance: top-1 ``1/C``, top-5 ``min(5, C)/C`` for ``C`` classes.
- Retrieval chance (self-retrieval: each image queries the others): the exact expected mAP of a
  random ranking (:func:`~.metrics.chance_map`, not the share of relevant images) and the
  expected precision of a random result, the same at every k (:func:`~.metrics.chance_precision`).
- The null P@k rule: precision@k (and its chance level) exists only for the k a database of the
  other ``N - 1`` images can give; for a larger k it is null, never a number.
- The rows of mAP and P@k per layer and code variant that ``map.json`` holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from neuralcodes.errors import NeuralCodesError
from neuralcodes.retrieval.metrics import RankingMetrics, chance_map, chance_precision

#: The k of the precision@k every result states.
PRECISION_KS: tuple[int, ...] = (5, 10)
#: map.json's keys of the two code variants.
VARIANTS: tuple[str, ...] = ("pre", "post")


def classification_chance(n_classes: int) -> dict[str, float]:
    """Top-1 and top-5 accuracy of guessing one of ``n_classes`` classes uniformly."""
    return {"top1": 1 / n_classes, "top5": min(5, n_classes) / n_classes}


def course_comparable(run_classes: int, run_ood: tuple[int | None, int | None],
                      course: dict[str, Any]) -> dict[str, bool]:
    """Whether a run's numbers are on the scale of the course's reference (``course``:
    :func:`neuralcodes.course.course_reference`): ``classification`` (losses, top-1, top-5) with
    the same number of in-domain classes; ``map`` with those and the same ood classes and
    images (``run_ood``). The report and the web app both show raw numbers side by side only
    so."""
    course_ood = course.get("ood", {"classes": 10, "images": 5000})
    same_classes = run_classes == course["num_classes"]
    same_ood = tuple(run_ood) == (course_ood["classes"], course_ood["images"])
    return {"classification": same_classes, "map": same_classes and same_ood}


def top5_trivial(n_classes: int) -> bool:
    """Whether top-5 accuracy says nothing: with at most 5 classes it is always 100% (shown as
    n/a by the report and the web app)."""
    return n_classes <= 5


def precision_ks(n_images: int, ks: Sequence[int] = PRECISION_KS) -> tuple[int, ...]:
    """The null P@k rule: the ``ks`` whose precision@k a self-retrieval over ``n_images``
    images has (k at most the ``n_images - 1`` others)."""
    return tuple(k for k in ks if k <= n_images - 1)


def retrieval_chance(labels: np.ndarray) -> dict[str, float | None]:
    """``map.json``'s chance levels for a self-retrieval over images of these ``labels``:
    ``chance_map`` and ``chance_p@k`` (null for a k the database cannot give; ``chance_map``
    null when no class has two images)."""
    labels = np.asarray(labels)
    try:
        out: dict[str, float | None] = {"chance_map": chance_map(labels)}
    except NeuralCodesError:  # no query has a relevant image (or no database at all)
        out = {"chance_map": None}
    usable = precision_ks(len(labels))
    for k in PRECISION_KS:
        out[f"chance_p@{k}"] = chance_precision(labels, k) if k in usable else None
    return out


def equal_class_sizes(n_images: int, n_classes: int) -> list[int]:
    """``n_images`` split as evenly as possible over ``n_classes`` classes."""
    base, extra = divmod(int(n_images), int(n_classes))
    return [base + (i < extra) for i in range(int(n_classes))]


def labels_of_sizes(class_sizes: Iterable[int]) -> np.ndarray:
    """Labels of classes of these sizes (for the chance levels of a set known by its sizes)."""
    sizes = [int(s) for s in class_sizes]
    return np.repeat(np.arange(len(sizes)), sizes)


def chance_levels(maps: dict[str, Any] | None, labels: np.ndarray | None) -> dict[str, Any]:
    """The retrieval chance levels a result shows, each the one ``map.json`` recorded (``maps``)
    where it has it, else computed from ``labels`` (None: unknown): ``{"map", "precision",
    "source"}`` (precision: that of the smallest k, the same at every k the database can give;
    source: ``"map"`` when the mAP's comes from map.json, ``"computed"``, or None)."""
    computed = retrieval_chance(labels) if labels is not None else {}

    def level(key: str) -> float | None:
        value = (maps or {}).get(key)
        return float(value) if isinstance(value, int | float) else computed.get(key)

    precision = next((p for p in (level(f"chance_p@{k}") for k in PRECISION_KS)
                      if p is not None), None)
    recorded = isinstance((maps or {}).get("chance_map"), int | float)
    source = "map" if recorded else "computed" if computed.get("chance_map") is not None else None
    return {"map": level("chance_map"), "precision": precision, "source": source}


def map_row(metrics: RankingMetrics) -> dict[str, Any]:
    """One layer's entry of ``map.json``: mAP, P@k (null where not measured: the null P@k
    rule) and the number of queries."""
    return {"map": metrics.map,
            **{f"p@{k}": float(metrics.precision[k].mean()) if k in metrics.precision else None
               for k in PRECISION_KS},
            "n_queries": len(metrics.ap)}


def map_rows(maps: dict[str, Any], n_queries: int | None = None) -> list[dict[str, Any]]:
    """``map.json``'s layers as rows ``{"layer", "relu", "map", "p@k"..., "n_queries"}``,
    pre-ReLU first (``n_queries``: where a row does not say)."""
    return [{"layer": layer, "relu": variant == "post", "map": m["map"],
             **{f"p@{k}": m.get(f"p@{k}") for k in PRECISION_KS},
             "n_queries": m.get("n_queries", n_queries)}
            for variant in VARIANTS if isinstance(maps.get(variant), dict)
            for layer, m in sorted(maps[variant].items())]
