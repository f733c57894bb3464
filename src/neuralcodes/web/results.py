"""The run's results as the web app shows them: evaluation, mAP per layer with chance levels, the
course's reference numbers (:mod:`neuralcodes.course`), figures, report."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuralcodes import features
from neuralcodes.course import course_reference
from neuralcodes.files import read_json
from neuralcodes.retrieval.scores import (
    chance_levels,
    classification_chance,
    course_comparable,
    map_row,
    map_rows,
    precision_ks,
    top5_trivial,
)

if TYPE_CHECKING:
    from neuralcodes.runs import RunDir
    from neuralcodes.web.service import ServedRun

log = logging.getLogger(__name__)

def figure_table(rd: RunDir, k: int) -> dict[str, tuple[str, Path]]:
    """Figures the app may serve, by the name of their file (:class:`~neuralcodes.runs.RunDir`
    declares them; ``k``: the run's top-k): name -> (title, path), one per code layer
    (:mod:`neuralcodes.features`). Requests name a figure by one of these keys only, never
    by a path."""
    table = [(rd.curves, "Learning curves: loss and accuracy per epoch"),
             (rd.top_figure(k), f"The first ood queries and their top {k}, layers side by side"),
             *[(rd.top_figure(k, x), f"The first ood queries and their top {k}, layer {x}")
               for x in features.code_names()],
             (rd.pca_plot, "mAP of PCA-compressed codes against their dimension"),
             (rd.methods_file("png"), "Beyond the paper: mAP of pooled conv descriptors, "
              "whitening and re-ranking")]
    return {path.stem: (title, path) for path, title in table}

#: The command that writes a run's report.html (every finished stage is skipped).
REPORT_COMMAND = "neuralcodes run --config RUN/config.json --out RUN"

_map_lock = threading.Lock()


def figure_path(served: ServedRun, name: str) -> Path | None:
    """The file of figure ``name`` (a key of :func:`figure_table`) if the run has it, made from the
    weights being served (a figure of other weights is not shown)."""
    found = figure_table(served.run, served.figure_k).get(name)
    if found is None:
        return None
    path = found[1]
    if not path.is_file() or (path != served.run.curves and not served.current(path)):
        return None
    return path


def run_results(served: ServedRun) -> dict[str, Any]:
    """Everything the results page shows (see :class:`neuralcodes.web.schemas.Results`); the
    numbers it states beside the measurements come from :mod:`neuralcodes.retrieval.scores`,
    as the report's do."""
    rd = served.run
    eval_ = read_json(rd.eval_json) if served.current(rd.eval_json) else None
    saved = read_json(rd.map_json) if served.current(rd.map_json) else None  # of these weights
    maps = map_rows(saved, len(served)) if saved else []
    source = f"{rd.root.name}/retrieval/map.json"
    if not maps:
        maps, source = _computed_map(served), "computed by the server from the ood codes"
    chance = chance_levels(saved, served.labels)
    for row in maps:
        row.update(chance_map=chance["map"], chance_p=chance["precision"])
    figures = [{"name": name, "title": title, "url": f"api/figure/{name}.png"}
               for name, (title, _) in figure_table(rd, served.figure_k).items()
               if figure_path(served, name)]
    n_classes = len(served.in_classes)
    return {"run": rd.root.name, "eval": eval_, "map": maps, "map_source": source,
            "relu": served.ood.relu, "n_classes": n_classes,
            "chance": {**classification_chance(n_classes), "top5_trivial": top5_trivial(n_classes)},
            # the course's numbers only beside a run of the course's dataset, and each only
            # where it is on this run's scale (the report's rule: course_comparable)
            "reference": _reference(n_classes, (len(served.ood_classes), len(served)))
            if served.dataset.spec.course else None,
            "curves_url": "api/curves.png" if rd.curves.is_file() else None,
            "figures": figures,
            "report_url": "report.html" if served.current(rd.report_html) else None,
            "report_command": REPORT_COMMAND, "methods": _methods(served)}


def _methods(served: ServedRun) -> dict[str, Any] | None:
    """The methods study's table and verdict (the report's), if made from these weights."""
    from neuralcodes.retrieval.methods.stage import summary

    path = served.run.methods_file("json")
    return summary(read_json(path)) if served.current(path) else None


def _computed_map(served: ServedRun) -> list[dict[str, Any]]:
    from neuralcodes.retrieval import evaluate_codes

    with _map_lock:  # computed once, on first request
        if served.computed_map is None:
            metrics = evaluate_codes(served.ood.codes, ks=precision_ks(len(served)), top_k=0)
            served.computed_map = [{"layer": layer, "relu": served.ood.relu, **map_row(m)}
                                   for layer, m in metrics.items() if layer in served.layers]
    return [dict(row) for row in served.computed_map]


def _reference(n_classes: int, ood: tuple[int, int]) -> dict[str, Any] | None:
    """The course's final numbers beside the run's where they are like for like
    (:func:`neuralcodes.retrieval.scores.course_comparable`, as in the report): test top-1 and
    top-5 with the course's number of classes, mAP per layer with its ood set too; None when
    neither is."""
    ref = course_reference()
    same = course_comparable(n_classes, ood, ref)
    if not any(same.values()):
        return None
    test = ref["evaluation"]["test"] if same["classification"] else {"top1": None, "top5": None}
    return {"map": ref["map"] if same["map"] else {}, "top1": test["top1"],
            "top5": test["top5"],
            "source": f"{ref['source']['repository']}/{ref['source']['notebook']}"}
