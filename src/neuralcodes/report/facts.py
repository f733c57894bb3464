"""Facts: every number the report states, read from a run directory's JSON artifacts.

:func:`collect` reads the run through :class:`~neuralcodes.runs.RunDir` (the only place that names
its files) into one plain dict; missing optional artifacts are ``None`` (or empty). The pure
statistics the report needs and the artifacts may not carry yet (the expected mAP of a random
ranking) come from :mod:`neuralcodes.retrieval.scores`, as the web app's do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neuralcodes import features, lineage
from neuralcodes.course import course_reference
from neuralcodes.files import read_json
from neuralcodes.retrieval.scores import chance_levels, equal_class_sizes, labels_of_sizes
from neuralcodes.runs import RunDir

# --------------------------------------------------------------------------- reading


def _read_optional(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(run: str | Path, k: int | None = None) -> dict[str, Any]:
    """Read a run's saved artifacts into one dict of facts (missing parts are ``None``).

    ``k``: the figures' k (default: the run's ``retrieval.k``). Only artifacts made from the
    run's current weights (``best.pt``; without it, those eval.json names) are read: one made
    from other weights counts as missing and is listed in ``stale`` with the command that
    recomputes it, so the report never mixes two sets of weights.
    """
    rd = RunDir.existing(run)
    saved = rd.saved(data=False)
    k = k if k is not None else int(saved["config"].get("retrieval", {}).get("k", 5))
    lin = _Lineage(rd)
    facts: dict[str, Any] = {
        "run": rd.root.name, "root": str(rd.root), "saved": saved,
        "epochs": _read_jsonl(rd.metrics),
        "eval": lin.read(rd.eval_json, f"neuralcodes evaluate {rd.root}"),
        "state": _read_optional(rd.train_state),
        "curves": rd.curves if rd.curves.is_file() else None,
        "architecture": _architecture(saved),
        "retrieval": _retrieval_facts(rd, lin, k),
        "improved": _find_improved_runs(rd, saved),
        "course": course_reference(),
        "dataset": dataset_facts(saved),
        "timings": _read_optional(rd.timings),
        # How the text names the artifacts it cites (relative to the run directory).
        "files": {k: p.relative_to(rd.root).as_posix() for k, p in (
            ("map", rd.map_json), ("pca", rd.pca_json), ("evidence", rd.evidence_json),
            ("train_state", rd.train_state), ("eval", rd.eval_json))},
    }
    facts["chance"] = _chance(facts["retrieval"]["map"], saved.get("data", {}))
    facts["k"] = k
    facts["weights"] = lin.weights
    facts["made_by"] = lin.made_by
    facts["stale"] = lin.stale
    return facts


def dataset_facts(saved: dict[str, Any]) -> dict[str, Any]:
    """The run's dataset: its name, title, and whether the course's reference numbers are for
    it (runs from before datasets were named trained on Tiny ImageNet, the only one then)."""
    from neuralcodes import datasets as registry

    spec = registry.get(str(saved.get("data", {}).get("dataset", registry.DEFAULT)))
    return {"name": spec.name, "title": spec.title, "course": spec.course}


class _Lineage:
    """Reads a run's JSON artifacts, keeping only those made from its current weights."""

    def __init__(self, rd: RunDir) -> None:
        self.rd = rd
        self.weights: dict[str, Any] | None = None
        if rd.best_checkpoint.is_file():
            self.weights = lineage.weights_identity(rd.best_checkpoint)
        elif rd.eval_json.is_file():
            self.weights = (lineage.recorded(rd.eval_json) or {}).get("weights")
        self.made_by: dict[str, lineage.Fingerprint | None] = {}  # file -> its fingerprint
        self.stale: list[str] = []  # one line per artifact left out

    def current(self, path: Path, command: str) -> bool:
        """Whether ``path`` exists and was made from the current weights (else noted)."""
        if not path.is_file():
            return False
        made = lineage.recorded(path)
        name = path.relative_to(self.rd.root).as_posix()
        if self.weights is not None and (made or {}).get("weights") != self.weights:
            self.stale.append(f"`{name}` was made from "
                              f"{lineage.describe_weights((made or {}).get('weights'))}, not "
                              f"the run's {lineage.describe_weights(self.weights)}; "
                              f"`{command}` recomputes it")
            return False
        self.made_by[name] = made
        return True

    def read(self, path: Path, command: str) -> Any:
        return read_json(path) if self.current(path, command) else None


def _architecture(saved: dict[str, Any]) -> dict[str, Any]:
    """Layer table and parameter count of the run's model (built on the meta device)."""
    import torch

    from neuralcodes.config import Config
    from neuralcodes.model import ConvNet, count_parameters, layer_table

    cfg = Config.from_dict(saved["config"])
    n = saved.get("data", {}).get("num_classes", 190)
    with torch.device("meta"):  # shapes and counts only: allocate nothing
        model = ConvNet(n, cfg.model)
    return {"num_classes": n, "rows": layer_table(model), "total": count_parameters(model)}


def _retrieval_facts(rd: RunDir, lin: _Lineage, k: int) -> dict[str, Any]:
    again = f"neuralcodes retrieval {rd.root}"
    out: dict[str, Any] = {"map": lin.read(rd.map_json, again),
                           "pca": lin.read(rd.pca_json, again),
                           "evidence": lin.read(rd.evidence_json, again)}
    combined = rd.top_figure(k)
    per_layer = [rd.top_figure(k, layer) for layer in features.code_names()]
    # each layer's figure at a legible size; the layers side by side as one more figure
    out["figures"] = [p for p in per_layer if p.is_file() and lin.current(p, again)]
    out["combined_figure"] = (combined if combined.is_file() and lin.current(combined, again)
                              else None)
    out["pca_plot"] = rd.pca_plot if lin.current(rd.pca_plot, again) else None
    return out


def _chance(maps: dict[str, Any] | None, data: dict[str, Any]) -> dict[str, Any] | None:
    """Chance levels of retrieval (:func:`~neuralcodes.retrieval.scores.chance_levels`): those
    map.json recorded, else computed assuming equally large ood classes."""
    n_ood = data.get("sizes", {}).get("ood")
    n_cls = len(data.get("ood_classes") or [])
    labels = labels_of_sizes(equal_class_sizes(n_ood, n_cls)) if n_ood and n_cls else None
    out = {**chance_levels(maps, labels), "images": n_ood, "classes": n_cls}
    return out if out["map"] is not None or out["precision"] is not None else None


def _find_improved_runs(rd: RunDir, saved: dict[str, Any]) -> list[dict[str, Any]]:
    """Sibling runs on the same data and splits that use one of the improving techniques."""
    found = []
    splits_hash = saved.get("data", {}).get("splits_hash")
    for path in sorted(rd.root.parent.iterdir()):
        other = RunDir(path)
        if path == rd.root or not other.config.is_file() or not other.eval_json.is_file():
            continue
        o = read_json(other.config)
        if o.get("data", {}).get("splits_hash") != splits_hash:
            continue
        cfg = o.get("config", {})
        used = [t for t, on in (("augment", cfg.get("train", {}).get("augment")),
                                ("batch_norm", cfg.get("model", {}).get("batch_norm"))) if on]
        if used:
            found.append({"name": path.name, "techniques": used,
                          "eval": read_json(other.eval_json),
                          "max_epochs": cfg.get("train", {}).get("max_epochs")})
    return found
