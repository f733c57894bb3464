"""The run's results as the web app shows them: evaluation, mAP per layer with chance levels, the
course's reference numbers (:mod:`neuralcodes.course`), figures, report."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuralcodes.course import course_reference
from neuralcodes.files import read_json
from neuralcodes.retrieval.metrics import chance_map

if TYPE_CHECKING:
    from neuralcodes.web.service import ServedRun

log = logging.getLogger(__name__)

#: Figures the app may serve: name -> (title, how to find it in a run for the run's k).
#: Requests name a figure by one of these keys only, never by a path.
FIGURES: dict[str, tuple[str, Any]] = {
    "curves": ("Learning curves: loss and accuracy per epoch", lambda rd, k: rd.curves),
    "top_layers": ("The first ood queries and their top {k}, layers side by side",
                   lambda rd, k: rd.top_figure(k)),
    **{f"top_layer{x}": (f"The first ood queries and their top {{k}}, layer {x}",
                         lambda rd, k, x=x: rd.top_figure(k, x)) for x in ("5", "6", "7")},
    "pca": ("mAP of PCA-compressed codes against their dimension", lambda rd, k: rd.pca_plot),
}

_map_lock = threading.Lock()


def figure_path(served: ServedRun, name: str) -> Path | None:
    """The file of figure ``name`` (a key of :data:`FIGURES`) if the run has it, made from the
    weights being served (a figure of other weights is not shown)."""
    if name not in FIGURES:
        return None
    path = Path(FIGURES[name][1](served.run, served.figure_k))
    if not path.is_file() or (name != "curves" and not served.current(path)):
        return None
    return path


def run_results(served: ServedRun) -> dict[str, Any]:
    """Everything the results page shows (see :class:`neuralcodes.web.schemas.Results`)."""
    rd = served.run
    eval_ = read_json(rd.eval_json) if served.current(rd.eval_json) else None
    maps, source = _saved_map(served)
    if maps is None:
        maps, source = _computed_map(served), "computed by the server from the ood codes"
    n_classes = len(served.in_classes)
    chance_ap, chance_p = _retrieval_chance(served)
    for row in maps:
        row.update(chance_map=chance_ap, chance_p=chance_p)
    figures = [{"name": name, "title": title.format(k=served.figure_k),
                "url": f"api/figure/{name}.png"}
               for name, (title, _) in FIGURES.items() if figure_path(served, name)]
    return {"run": rd.root.name, "eval": eval_, "map": maps, "map_source": source,
            "relu": served.ood.relu, "n_classes": n_classes,
            "chance": {"top1": 1 / n_classes, "top5": min(5, n_classes) / n_classes},
            # the course's numbers only beside a run of the course's dataset
            "reference": _reference() if served.dataset.spec.course else None,
            "curves_url": "api/curves.png" if rd.curves.is_file() else None,
            "figures": figures,
            "report_url": "report.html" if served.current(rd.report_html) else None}


def _retrieval_chance(served: ServedRun) -> tuple[float | None, float | None]:
    """Mean over the ood queries of the expected AP and precision of a random ranking."""
    n = len(served) - 1
    _, counts = np.unique(served.labels, return_counts=True)
    if n <= 0 or counts.max() < 2:
        return None, None
    precision = float(np.sum(counts * (counts - 1)) / (len(served) * n))
    return chance_map(served.labels), precision


def _saved_map(served: ServedRun) -> tuple[list[dict[str, Any]] | None, str]:
    """mAP rows from ``retrieval/map.json`` (``{"pre"|"post": {layer: {"map", ...}}}``)."""
    path = served.run.map_json
    if not served.current(path):  # absent, or computed from other weights: not shown
        return None, ""
    rows = [{"layer": layer, "relu": variant == "post", "map": m["map"], "p@5": m.get("p@5"),
             "p@10": m.get("p@10"), "n_queries": m.get("n_queries", len(served))}
            for variant, layers in sorted(read_json(path).items(), reverse=True)
            if variant in ("pre", "post") for layer, m in sorted(layers.items())]
    return (rows or None), f"{served.run.root.name}/retrieval/map.json"


def _computed_map(served: ServedRun) -> list[dict[str, Any]]:
    from neuralcodes.retrieval import evaluate_codes

    with _map_lock:  # computed once, on first request
        if served.computed_map is None:
            ks = tuple(k for k in (5, 10) if len(served) > k)
            metrics = evaluate_codes(served.ood.codes, ks=ks, top_k=0)
            served.computed_map = [
                {"layer": layer, "relu": served.ood.relu, "map": m.map,
                 **{f"p@{k}": float(m.precision[k].mean()) if k in ks else None
                    for k in (5, 10)},
                 "n_queries": len(served)}
                for layer, m in metrics.items() if layer in served.layers]
    return [dict(row) for row in served.computed_map]


def _reference() -> dict[str, Any]:
    """The course's final numbers beside the run's: mAP per layer, test top-1 and top-5."""
    ref = course_reference()
    test = ref["evaluation"]["test"]
    return {"map": ref["map"], "top1": test["top1"], "top5": test["top5"],
            "source": f"{ref['source']['repository']}/{ref['source']['notebook']}"}
