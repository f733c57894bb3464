"""The report of a labelled collection's retrieval (:mod:`neuralcodes.retrieval.labelled`):
``report.md`` and ``report.html`` (one page, figure embedded) in the index folder, each ending in
its lineage line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuralcodes import lineage
from neuralcodes.files import write_text
from neuralcodes.report.render import cell, fmt, signed, to_html
from neuralcodes.retrieval.labelled import FIGURE, REPORT_HTML, REPORT_MD, measure_collection
from neuralcodes.runs import TrainedRun

DEFINITIONS = """\
## What each measure means

Every image in a class subfolder is a query against all the other images in class subfolders
(N of them: itself excluded); the relevant images are the R others of its class (its
first-level subfolder). Images are ranked by the cosine of their stored codes, highest
first; exact ties by index order. rel(i) is 1 when the image at rank i is relevant.

- **P@k** (precision at k): the share of relevant images among the first k,
  P@k = (1/k) sum_{i<=k} rel(i). Averaged over every query. Chance: R/N.
- **recall@k**: the share of the query's R relevant images found in the first k,
  recall@k = (1/R) sum_{i<=k} rel(i). Chance: k/N.
- **mAP** (mean average precision): AP = (1/R) sum_{i=1..N} P@i rel(i), the mean of the
  precision at the rank of each relevant image (non-interpolated, over the full ranking);
  mAP is its mean over the queries. 1: every relevant image ranks before every other.
  Chance: exactly E[AP] = (H_N + (R-1)(N - H_N)/(N-1)) / N, H_N = sum_{i<=N} 1/i (not R/N).
- **mAP@k**: papers define it differently. Here AP@k = (1/min(R, k)) sum_{i<=k} P@i rel(i),
  the AP of the first k results divided by the most relevant images k results can hold (as the
  `apk` of Kaggle and ml_metrics): 1 exactly when the first k are as good as possible. (Other
  papers divide by R, which caps AP@k below 1 when R > k, or by the relevant images found in
  the first k, which ignores those missed.) Chance: exactly
  E[AP@k] = R (H_k + (R-1)(k - H_k)/(N-1)) / (N min(R, k)).

mAP, mAP@k and recall@k are averaged over the queries with at least one relevant image; P@k over
every query. Chance levels are the expected values under a uniformly random ranking, averaged
the same way. *Above chance*: the measure minus its chance level, with the 95% percentile
bootstrap interval over the queries (2,000 resamples, paired: the same queries resampled for
both); an interval that excludes 0 is significant.
"""


def _table(result: dict[str, Any]) -> list[str]:
    names = result["names"]
    lines = ["| layer | " + " | ".join(names.values()) + " |",
             "|---|" + "---:|" * len(names)]
    for layer, row in result["layers"].items():
        lines.append(f"| {cell(layer)} | " + " | ".join(fmt(row[k]) for k in names) + " |")
    lines.append("| chance | " + " | ".join(fmt(result["chance"][k]) for k in names) + " |")
    lines += ["", "Above chance (95% interval):", "",
              "| layer | " + " | ".join(names.values()) + " |", "|---|" + "---:|" * len(names)]
    for layer, row in result["layers"].items():
        cells = [f"{signed(d['diff'])} [{signed(d['ci95'][0])}, {signed(d['ci95'][1])}]"
                 for d in (row["above_chance"][k] for k in names)]
        lines.append(f"| {cell(layer)} | " + " | ".join(cells) + " |")
    return lines


def _comparisons(result: dict[str, Any]) -> list[str]:
    if not result["comparisons"]:
        return []
    lines = ["## Layers compared (mAP)", "", "| layers | mAP difference | 95% interval | "
             "significant |", "|---|---:|---|---|"]
    for p in result["comparisons"]:
        lines.append(f"| {cell(p['a'])} − {cell(p['b'])} | {signed(p['diff'])} | "
                     f"[{signed(p['ci95'][0])}, {signed(p['ci95'][1])}] | "
                     f"{'yes' if p['significant'] else 'no'} |")
    best = result["best_layer"]
    lines += ["", f"Best layer: {cell(best)}." if best else
              "No layer is significantly better than every other one.", ""]
    return lines


def markdown(result: dict[str, Any], figure: str) -> str:
    """The report's Markdown (``figure``: the figure's file name, beside it)."""
    left = result.get("unlabelled", 0)
    head = [f"# Retrieval on the collection {cell(result['index'])}", "",
            f"Folder `{cell(result['root'])}`: {result['n_images']:,} images in "
            f"{result['n_classes']} classes (first-level subfolders)"
            + (f"; {left:,} image{'s' if left > 1 else ''} directly in the folder (no class) "
               "left out."
               if left else "."),
            f"{result['n_queries_with_relevant']:,} queries have at least one relevant image. "
            f"Codes: the index's stored codes ({'post' if result['relu'] else 'pre'}-ReLU, "
            "centred by the mean training code; layer 5 by PCA), ranked exactly.", "",
            "## Results", ""]
    return "\n".join([*head, *_table(result), "", f"![retrieval per layer]({figure})", "",
                      *_comparisons(result), DEFINITIONS])


def collection_report(run: TrainedRun, index: str | Path, *, force: bool = False
                      ) -> tuple[Path, dict[str, Any]]:
    """Measure a labelled index (:func:`~neuralcodes.retrieval.labelled.measure_collection`)
    and write its ``report.md`` and ``report.html`` beside the results, unless they record the
    same measurement: (the index folder, the result)."""
    out, result = measure_collection(run, index, force=force)
    fp = result[lineage.KEY]
    md, page = out / REPORT_MD, out / REPORT_HTML
    if lineage.needs_run("collection report", [md, page], fp, force=force):
        text = markdown(result, FIGURE)
        html = to_html(text, f"neuralcodes — collection {result['index']}", out)
        write_text(md, text + "\n" + lineage.text_line(fp) + "\n")
        write_text(page, html.rstrip() + "\n" + lineage.text_line(fp) + "\n")
    return out, result
