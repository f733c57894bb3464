"""The methods study as a stage of ``neuralcodes retrieval`` / ``run``: ``retrieval/methods.json``
and ``methods.png`` (names: :class:`~neuralcodes.runs.RunDir`), recomputed exactly when the
weights, the codes' variant and precision, or the families asked for (``retrieval.methods``)
change (:func:`neuralcodes.lineage.methods_fingerprint`), and the verdict written from its
numbers (:func:`verdict`), which the report and the web app both state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from neuralcodes import lineage
from neuralcodes.config import Config
from neuralcodes.files import read_json, write_json
from neuralcodes.retrieval.codes import codes_fingerprint
from neuralcodes.retrieval.methods.study import (
    TRAIN_IMAGES,
    run_methods_study,
    write_methods_figure,
)
from neuralcodes.runs import TrainedRun

log = logging.getLogger(__name__)


def run_methods(run: TrainedRun | str | Path, *, config: Config | None = None,
                relu: bool | None = None, force: bool = False, progress: bool = True,
                train_images: int = TRAIN_IMAGES) -> dict[str, Any] | None:
    """Write (or keep) the run's methods study of the ``relu`` codes (None: the config's
    ``retrieval.relu``); None when ``retrieval.methods`` is off."""
    if not isinstance(run, TrainedRun):
        run = TrainedRun.open(run, config, progress=progress)
    families = run.config.retrieval.method_families()
    if not families:
        log.info("methods study: off (retrieval.methods=false)")
        return None
    small = [s for s in ("train", "val", "ood") if len(getattr(run.splits, s)) < 2]
    if small:  # a tiny run: the rest of the retrieval study stands without it
        log.warning(f"methods study: left out (fewer than 2 {' and '.join(small)} images: "
                    "nothing to fit, tune or rank)")
        return None
    rd = run.dir
    codes_fp = codes_fingerprint(run, "ood", run.relu(relu))
    fp = lineage.methods_fingerprint(codes_fp, families, train_images)
    table_path, figure = rd.methods_file("json"), rd.methods_file("png")
    if lineage.needs_run("methods study", [table_path, figure], fp, force=force):
        relu = bool(codes_fp["settings"]["relu"])
        table = run_methods_study(run, train_images=train_images, relu=relu,
                                  precision=run.precision, families=families,
                                  progress=run.progress)
        table["verdict"] = verdict(table)
        write_methods_figure(table, figure, metadata=lineage.png_metadata(fp))
        write_json(table_path, lineage.stamped(table, fp))  # last: the figure is current
    return read_json(table_path)


def _signed(row: dict[str, Any]) -> str:
    """A difference of mAP with its interval, in percentage points (the report's unit)."""
    lo, hi = row["ci95"]
    return f"{100 * row['diff']:+.2f} pp [{100 * lo:+.2f}, {100 * hi:+.2f}]"


def _names(rows: list[dict[str, Any]], limit: int = 4) -> str:
    shown = ", ".join(f"{r['method']} ({_signed(r)})" for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def verdict(table: dict[str, Any]) -> list[str]:
    """Sentences written from the table's numbers: a method "beats" another only where the
    paired-bootstrap 95% interval of their difference excludes 0."""
    rows = [r for r in table["rows"] if r["method"] != table["reference"]]
    ref = next(r for r in table["rows"] if r["method"] == table["reference"])
    beat = sorted((r for r in rows if r["ci95"][0] > 0), key=lambda r: -r["diff"])
    worse = sorted((r for r in rows if r["ci95"][1] < 0), key=lambda r: r["diff"])
    out = [f"Reference: {ref['method']}, the best of the paper's codes on these "
           f"{table['n_queries']:,} queries (mAP {100 * ref['map']:.2f}%; chance "
           f"{100 * table['chance_map']:.2f}%)."]
    if beat:
        out.append(f"{len(beat)} of the {len(rows)} other methods beat it (95% interval of the "
                   f"difference above 0), the largest gains: {_names(beat)}.")
    else:
        out.append(f"None of the {len(rows)} other methods beats it (no interval of the "
                   "difference lies above 0).")
    if worse:
        out.append(f"{len(worse)} are worse than it (interval below 0): {_names(worse, 3)}.")
    out.append(f"The other {len(rows) - len(beat) - len(worse)} differ from it by less than "
               "the intervals resolve.")
    out += _pairs_verdict(table["rows"])
    return out


def _pairs_verdict(rows: list[dict[str, Any]]) -> list[str]:
    """Learned whitening against plain PCA at the same size, re-ranking against its input."""
    out = []
    lw = [r for r in rows if r.get("vs") and r["family"] == "whitening"]
    if lw:
        wins = [r for r in lw if r["vs"]["ci95"][0] > 0]
        losses = [r for r in lw if r["vs"]["ci95"][1] < 0]
        out.append(f"Learned whitening against plain PCA of the same descriptor at the same size "
                   f"(the paper's Sec. 5 claim): it beats PCA in {len(wins)} of {len(lw)} cases"
                   + (f", loses in {len(losses)}" if losses else "")
                   + (f" (e.g. {wins[0]['method']}: "
                      f"{_signed(wins[0]['vs'])})" if wins else "") + ".")
    rr = [r for r in rows if r.get("vs") and r["family"] == "reranking"]
    if rr:
        base = rr[0]["vs"]["method"]
        gains = [r["method"].rpartition("+")[2] for r in rr if r["vs"]["ci95"][0] > 0]
        losses = [r["method"].rpartition("+")[2] for r in rr if r["vs"]["ci95"][1] < 0]
        out.append(f"Re-ranking {base} (chosen by validation mAP): "
                   + (f"{', '.join(gains)} improve{'s' * (len(gains) == 1)} it"
                      if gains else "no re-ranker improves it significantly")
                   + (f"; {', '.join(losses)} make{'s' * (len(losses) == 1)} it worse"
                      if losses else "") + ".")
    return out


def _params(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in (row.get("params") or {}).items())


def summary(table: dict[str, Any]) -> dict[str, Any]:
    """methods.json as the report and the web app show it: one row per method with its
    numbers (``mark``: its interval against the reference excludes 0), and the verdict."""
    rows = [{"method": r["method"], "params": _params(r), "family": r["family"],
             "dims": r["dims"], "map": r["map"], "p5": r.get("p@5"), "p10": r.get("p@10"),
             "diff": r["diff"], "ci95": r["ci95"], "significant": r["significant"],
             "reference": r["method"] == table["reference"], "ms": r["ms_per_query"]}
            for r in table["rows"]]
    return {"rows": rows, "reference": table["reference"], "chance_map": table["chance_map"],
            "n_queries": table["n_queries"], "relu": table.get("relu"),
            "fit": table.get("fit") or {}, "seconds": table.get("seconds") or {},
            "reranked": table.get("reranked"),
            "verdict": table.get("verdict") or verdict(table)}
