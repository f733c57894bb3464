"""What the facts say: the comparisons and verdicts the report's sentences state.

Every function takes the facts of :func:`neuralcodes.report.facts.collect` and returns plain
values for the template. A claim (a layer is best, training stopped because of overfitting, the
classifier is at chance) is made here only when the run's own numbers support it, so the template
never states something the tables next to it contradict.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from neuralcodes.report.commands import improve_command, run_time, train_longer_command
from neuralcodes.retrieval.metrics import chance_map
from neuralcodes.retrieval.scores import (
    classification_chance,
    course_comparable,
    equal_class_sizes,
    labels_of_sizes,
    top5_trivial,
)
from neuralcodes.runs import CHECKPOINTS

#: The layer Babenko et al. found best for retrieval (ImageNet-trained network).
PAPER_BEST_LAYER = "6"
#: Colour similarities (means without recorded intervals) closer than this count as equal.
COLOUR_TIE = 0.01
#: Below this test top-1 accuracy a model is too weak to test the paper's claims about its
#: codes (the course's reference model reached 35% on 190 classes).
MIN_TOP1_FOR_CLAIMS = 0.25


def _variant(facts: dict[str, Any]) -> str:
    relu = facts["saved"].get("config", {}).get("retrieval", {}).get("relu", False)
    return "post" if relu else "pre"


def _per_variant(value: Any, variant: str) -> Any:
    """A map.json entry that is either one value or a dict keyed by ``pre``/``post``."""
    if isinstance(value, dict) and set(value) <= {"pre", "post"}:
        return value.get(variant)
    return value


# --------------------------------------------------------------------------- training


def training(facts: dict[str, Any]) -> dict[str, Any] | None:
    """How training went: epochs, time, early stopping, the weights kept."""
    rows = facts["epochs"]
    if not rows:
        return None
    state = facts.get("state") or {}
    tcfg = facts["saved"].get("config", {}).get("train", {})
    best = min(rows, key=lambda r: r["val_loss"])
    last = rows[-1]
    kept = state.get("kept") if state.get("kept") in CHECKPOINTS else "best"
    kept_row = last if kept == "last" else next(
        (r for r in rows if r["epoch"] == state.get("best_epoch")), best)
    stopped_early = state.get("stopped_early") if "stopped_early" in state else None
    stop_row = next((r for r in rows if r["epoch"] == state.get("stopped_epoch")), last)
    # Overfitting shows as a validation loss above its best while the training loss still falls.
    before = [r for r in rows if r["epoch"] < stop_row["epoch"]]
    overfitting = bool(before) and stop_row["val_loss"] > best["val_loss"] and (
        stop_row["train_loss"] < before[-1]["train_loss"])
    return {
        "epochs": len(rows), "first": rows[0], "last": last, "best": best,
        "minutes": sum(r.get("seconds", 0.0) for r in rows) / 60,
        "state_known": bool(state), "finished": state.get("finished"),
        "stopped_early": stopped_early, "stop": stop_row, "overfitting": overfitting,
        "patience": state.get("patience", tcfg.get("patience")),
        "max_epochs": tcfg.get("max_epochs"), "kept": kept, "kept_row": kept_row,
        "kept_recorded": "kept" in state, "device": state.get("device"),
    }


def course_curves(facts: dict[str, Any]) -> dict[str, Any] | None:
    """This run's per-epoch metrics against the course's, for the epochs both have (None: not
    the course's dataset, or no epoch in common)."""
    if not facts["dataset"]["course"]:
        return None
    course = {r["epoch"]: r for r in facts["course"]["epochs"]}
    both = [(r, course[r["epoch"]]) for r in facts["epochs"] if r["epoch"] in course]
    if not both:
        return None
    keys = ("train_loss", "val_loss", "train_acc", "val_acc")
    rows = [{"epoch": r["epoch"], **{k: (r.get(k), c[k], None if r.get(k) is None
                                         else r[k] - c[k]) for k in keys}} for r, c in both]
    cmp = comparability(facts)
    norm = [{"epoch": r["epoch"],
             **{k: (_normalise(k, r.get(k), cmp["run_classes"]),
                    _normalise(k, c[k], cmp["course_classes"])) for k in keys}}
            for r, c in both]
    mean = {k: sum(row[k][2] for row in rows) / len(rows) for k in keys
            if all(row[k][2] is not None for row in rows)}
    data = facts["saved"].get("data", {})
    tcfg = facts["saved"].get("config", {}).get("train", {})
    ref = facts["course"]
    setup = []
    if data.get("num_classes") not in (None, ref["num_classes"]):
        setup.append(f"{data['num_classes']} in-domain classes instead of {ref['num_classes']}")
    if tcfg.get("batch_size") not in (None, ref["batch_size"]):
        setup.append(f"batch {tcfg['batch_size']} instead of {ref['batch_size']}")
    train_n = data.get("sizes", {}).get("train")
    steps = math.ceil(train_n / tcfg["batch_size"]) if train_n and tcfg.get("batch_size") else None
    if steps is not None and steps != ref["steps_per_epoch"]:
        setup.append(f"{steps:,} step{'s' * (steps != 1)} per epoch instead of "
                     f"{ref['steps_per_epoch']}")
    return {"rows": rows, "n": len(rows), "mean": mean, "setup_differences": setup,
            "run_epochs": len(facts["epochs"]), "course_epochs": len(course),
            "like_for_like": cmp["same_classes"], "normalised": norm}


def comparability(facts: dict[str, Any]) -> dict[str, Any]:
    """Whether this run's numbers compare directly with the course's: the same number of
    in-domain classes (losses and accuracies) and of ood classes and images (mAP)."""
    ref = facts["course"]
    data = facts["saved"].get("data", {})
    run_classes = facts["architecture"]["num_classes"]
    chance = facts.get("chance") or {}
    same = course_comparable(run_classes, (chance.get("classes"), chance.get("images")), ref)
    return {"run_classes": run_classes, "course_classes": ref["num_classes"],
            "same_classes": same["classification"],
            "run_ood": {"classes": chance.get("classes") or len(data.get("ood_classes") or []),
                        "images": chance.get("images")},
            "course_ood": ref.get("ood", {"classes": 10, "images": 5000}),
            "same_ood": same["map"]}


def _normalise(key: str, value: float | None, classes: int) -> float | None:
    """A loss as a share of ln C (1 = a uniform guess over C classes), an accuracy as a
    multiple of chance (1/C)."""
    if value is None:
        return None
    return value / math.log(classes) if key.endswith("loss") else value * classes


def quality(facts: dict[str, Any]) -> dict[str, Any] | None:
    """Is the classifier good enough for its codes to test the paper's claims?"""
    test = ((facts.get("eval") or {}).get("splits") or {}).get("test")
    if not test:
        return None
    n = facts["architecture"]["num_classes"]
    chance = classification_chance(n)["top1"]
    se = math.sqrt(chance * (1 - chance) / max(1, test.get("n") or 1))
    at_chance = test["top1"] <= chance + 2 * se
    return {"top1": test["top1"], "chance": chance, "times_chance": test["top1"] * n,
            "n": test.get("n"), "at_chance": at_chance, "threshold": MIN_TOP1_FOR_CLAIMS,
            "weak": at_chance or test["top1"] < MIN_TOP1_FOR_CLAIMS,
            "course_top1": facts["course"]["evaluation"]["test"]["top1"]}


# --------------------------------------------------------------------------- classification


def results(facts: dict[str, Any]) -> dict[str, Any] | None:
    """Evaluation per split, chance level, the train-test gap and the course's numbers."""
    ev = facts.get("eval")
    if not ev:
        return None
    splits = ev["splits"]
    n_cls = facts["architecture"]["num_classes"]
    chance = classification_chance(n_cls)
    chance1, chance5 = chance["top1"], chance["top5"]
    at_chance = {}
    for split, m in splits.items():
        # Within two binomial standard errors of guessing (or below it).
        se = math.sqrt(chance1 * (1 - chance1) / max(1, m.get("n") or 1))
        at_chance[split] = m["top1"] <= chance1 + 2 * se
    train, test = splits.get("train"), splits.get("test")
    gap = gap_se = None
    if train and test:
        gap = train["top1"] - test["top1"]
        # Standard error of a difference of two proportions (independent samples).
        gap_se = math.sqrt(sum(m["top1"] * (1 - m["top1"]) / max(1, m.get("n") or 1)
                               for m in (train, test)))
    course = facts["course"]["evaluation"]
    side = [{"split": s, "run": splits.get(s), "course": course[s]} for s in course]
    cmp = comparability(facts)
    for row in side:
        run = row["run"] or {}
        row["norm"] = {
            "loss": (_normalise("loss", run.get("loss"), n_cls),
                     _normalise("loss", row["course"]["loss"], cmp["course_classes"])),
            "top1": (_normalise("acc", run.get("top1"), n_cls),
                     _normalise("acc", row["course"]["top1"], cmp["course_classes"])),
            "top5": (None if run.get("top5") is None else run["top5"] / chance5,
                     row["course"]["top5"] / classification_chance(cmp["course_classes"])["top5"])}
    return {"splits": splits, "epoch": ev.get("epoch"), "checkpoint": ev.get("checkpoint"),
            "chance_top1": chance1, "chance_top5": chance5, "at_chance": at_chance,
            "test": test, "train": train, "gap": gap, "gap_se": gap_se,
            "gap_significant": gap is not None and gap > 2 * gap_se, "side_by_side": side,
            "like_for_like": cmp["same_classes"], "top5_trivial": top5_trivial(n_cls)}


# --------------------------------------------------------------------------- retrieval


def _pair(p: dict[str, Any]) -> dict[str, Any]:
    lo, hi = p["ci95"]
    significant = bool(p["significant"]) if "significant" in p else not lo <= 0 <= hi
    diff = float(p["diff"])
    winner = (p["a"] if diff > 0 else p["b"]) if significant else None
    return {"a": str(p["a"]), "b": str(p["b"]), "diff": diff, "lo": float(lo), "hi": float(hi),
            "significant": significant, "winner": None if winner is None else str(winner)}


def layers(facts: dict[str, Any]) -> dict[str, Any] | None:
    """mAP per layer, chance level, significance of the differences, the verdict on the paper."""
    maps = facts["retrieval"].get("map")
    variant = _variant(facts)
    per = (maps or {}).get(variant) or {}
    ours = {k: float(v["map"]) for k, v in per.items() if isinstance(v, dict) and "map" in v}
    if not ours:
        return None
    order = sorted(ours, key=lambda k: (-ours[k], k))
    chance = (facts.get("chance") or {}).get("map")
    raw_pairs = _per_variant(maps.get("pairs"), variant)
    available = isinstance(raw_pairs, list) and bool(raw_pairs)
    pairs = [_pair(p) for p in raw_pairs] if available else []
    best = _per_variant(maps.get("best_layer"), variant) if available else None
    best = None if best is None else str(best)
    beats_paper = sorted({p["winner"] for p in pairs if p["winner"] and PAPER_BEST_LAYER in
                          (p["a"], p["b"]) and p["winner"] != PAPER_BEST_LAYER})
    if not available:
        verdict = "unavailable"
    elif best == PAPER_BEST_LAYER:
        verdict = "confirms"
    elif beats_paper:
        verdict = "contradicts"
    else:
        verdict = "inconclusive"
    course_map = facts["course"]["map"]
    cmp = comparability(facts)
    course_ood = cmp["course_ood"]
    course_chance = chance_map(labels_of_sizes(equal_class_sizes(course_ood["images"],
                                                                  course_ood["classes"])))
    return {
        "course_chance": course_chance,
        "course_times_chance": {k: v / course_chance for k, v in course_map.items()},
        "like_for_like": cmp["same_ood"] and cmp["same_classes"], "comparability": cmp,
        "variant": variant, "maps": ours, "order": order, "best_point": order[0],
        "per_layer": {k: per[k] for k in ours}, "all": maps,
        "chance": chance, "chance_source": (facts.get("chance") or {}).get("source"),
        "chance_info": facts.get("chance"),
        "times_chance": {k: v / chance for k, v in ours.items()} if chance else {},
        "intervals": available, "pairs": pairs, "best": best, "verdict": verdict,
        "beats_paper": beats_paper, "paper_best": PAPER_BEST_LAYER,
        "course": course_map, "course_order": sorted(course_map, key=lambda k: -course_map[k]),
    }


def evidence(facts: dict[str, Any]) -> dict[str, Any] | None:
    """Measured differences between the layers' results, with their baselines."""
    ev = facts["retrieval"].get("evidence")
    if not ev:
        return None
    per = ev.get("per_layer") or {}
    colour = {k: v["colour_similarity"] for k, v in sorted(per.items())
              if v.get("colour_similarity") is not None}
    base = ev.get("colour_similarity_baseline") or {}
    random_pairs, same_class = base.get("random_pairs"), base.get("same_class_pairs")
    most = max(colour, key=colour.get) if colour else None
    order = sorted(colour)
    return {
        "relu": ev.get("relu"), "colour": colour, "most_colour": most,
        "tie": COLOUR_TIE,
        "decreasing": len(order) > 1 and all(colour[a] - colour[b] >= COLOUR_TIE
                                             for a, b in itertools.pairwise(order)),
        "random_pairs": random_pairs, "same_class_pairs": same_class,
        "above_same_class": [k for k, v in colour.items()
                             if same_class is not None and v - same_class >= COLOUR_TIE],
        "p5": {k: v["p@5"] for k, v in sorted(per.items()) if v.get("p@5") is not None},
        "sparsity": {k: v["sparsity"] for k, v in sorted(per.items())
                     if v.get("sparsity") is not None},
        "dims": {k: v["dims"] for k, v in sorted(per.items()) if v.get("dims")},
        "changed": ev.get("top_k_changed") or ev.get("top5_changed") or {},
        "top_k": ev.get("top_k", 5), "first_queries": ev.get("first_queries", 10),
        "random_precision": (facts.get("chance") or {}).get("precision"),
    }


def _dims_key(d: Any) -> tuple[bool, int]:
    return (d == "full", 0 if d == "full" else int(d))


def pca(facts: dict[str, Any]) -> dict[str, Any] | None:
    """The PCA table and, per layer, how far the codes compress without a significant loss."""
    p = facts["retrieval"].get("pca")
    table = (p or {}).get("table") or []
    if not table:
        return None
    dims = sorted({row["dims"] for row in table}, key=_dims_key)
    grid = []
    for layer in sorted({str(row["layer"]) for row in table}):
        for whiten in (False, True):
            vals = {row["dims"]: row["map"] for row in table
                    if str(row["layer"]) == layer and bool(row.get("whiten")) == whiten}
            if vals:
                grid.append({"name": f"layer {layer}" + (" (whitened)" if whiten else ""),
                             "values": [vals.get(d) for d in dims]})
    intervals = all("ci95" in r and "diff_vs_full" in r for r in table if r["dims"] != "full")
    per_layer = []
    for layer in sorted({str(row["layer"]) for row in table}):
        rows = sorted((r for r in table if str(r["layer"]) == layer and not r.get("whiten")),
                      key=lambda r: _dims_key(r["dims"]))
        full = next((r["map"] for r in rows if r["dims"] == "full"), None)
        small = [r for r in rows if r["dims"] != "full"]
        if not full or not small:
            continue
        entry: dict[str, Any] = {"layer": layer, "full": full}
        if intervals:
            ok = [r for r in small if r["ci95"][1] >= 0]  # not significantly below full
            lost = [r for r in small if r["ci95"][1] < 0]
            entry["smallest_ok"] = ok[0] if ok else None
            entry["largest_lost"] = lost[-1] if lost else None
        else:
            r128 = min(small, key=lambda r: abs(int(r["dims"]) - 128))
            entry["near128"] = {"dims": r128["dims"], "share": r128["map"] / full}
        per_layer.append(entry)
    return {"dims": dims, "grid": grid, "intervals": intervals, "per_layer": per_layer,
            "fit": (p or {}).get("fit"), "plot": facts["retrieval"].get("pca_plot")}


def methods(facts: dict[str, Any]) -> dict[str, Any] | None:
    """The methods study beyond the paper (methods.json): its table, figure and verdict."""
    from neuralcodes.retrieval.methods.stage import summary

    table = facts["retrieval"].get("methods")
    if not table or not table.get("rows"):
        return None
    return {**summary(table), "plot": facts["retrieval"].get("methods_plot")}


# --------------------------------------------------------------------------- techniques


def techniques(facts: dict[str, Any]) -> dict[str, Any]:
    """The improving techniques, with this run's evidence and any sibling run that measured them."""
    base = ((facts.get("eval") or {}).get("splits", {}).get("test") or {}).get("top1")
    measured: dict[str, list[dict[str, Any]]] = {"augment": [], "batch_norm": []}
    for run in facts.get("improved", []):
        top1 = run["eval"]["splits"]["test"]["top1"]
        note = {"name": run["name"], "techniques": run["techniques"], "top1": top1,
                "diff": None if base is None else top1 - base,
                "max_epochs": run.get("max_epochs"),
                "same_budget": run.get("max_epochs") == facts["saved"].get("config", {}).get(
                    "train", {}).get("max_epochs")}
        for t in run["techniques"]:
            measured.setdefault(t, []).append(note)
    data = facts["saved"].get("data", {})
    n_classes = data.get("num_classes") or 1
    return {"measured": measured, "base": base,
            "per_class": data.get("sizes", {}).get("train", 0) // n_classes,
            "params": facts["architecture"]["total"], "command": improve_command(facts),
            "longer": train_longer_command(facts),
            **run_time(facts.get("timings") or {})}
