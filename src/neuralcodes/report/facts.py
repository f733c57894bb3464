"""Facts: every number the report states, read from a run directory's JSON artifacts.

:func:`collect` reads the run through :class:`~neuralcodes.runs.RunDir` (the only place that names
its files) into one plain dict; missing optional artifacts are ``None`` (or empty). The pure
statistics the report needs and the artifacts may not carry yet (the expected mAP of a random
ranking) are computed here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from neuralcodes.course import course_reference
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json
from neuralcodes.retrieval.metrics import chance_map
from neuralcodes.runs import RunDir

#: The layers whose codes are studied.
LAYERS: tuple[str, ...] = ("5", "6", "7")


# --------------------------------------------------------------------------- statistics


def chance_map_of_sizes(class_sizes: Iterable[int]) -> float:
    """Expected mAP of random rankings when every image of classes of these sizes queries all
    the others (:func:`neuralcodes.retrieval.metrics.chance_map` on labels of those sizes)."""
    sizes = [int(s) for s in class_sizes]
    labels = np.repeat(np.arange(len(sizes)), sizes)
    try:
        return chance_map(labels)
    except NeuralCodesError as e:
        raise ValueError(str(e)) from None


def equal_class_sizes(n_images: int, n_classes: int) -> list[int]:
    """``n_images`` split as evenly as possible over ``n_classes`` classes."""
    base, extra = divmod(int(n_images), int(n_classes))
    return [base + (i < extra) for i in range(int(n_classes))]


# --------------------------------------------------------------------------- reading


def _read_optional(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(run: str | Path) -> dict[str, Any]:
    """Read a run's saved artifacts into one dict of facts (missing parts are ``None``)."""
    rd = RunDir.existing(run)
    saved = rd.saved(data=False)
    facts: dict[str, Any] = {
        "run": rd.root.name, "root": str(rd.root), "saved": saved,
        "epochs": _read_jsonl(rd.metrics),
        "eval": _read_optional(rd.eval_json),
        "state": _read_optional(rd.train_state),
        "curves": rd.curves if rd.curves.is_file() else None,
        "architecture": _architecture(saved),
        "retrieval": _retrieval_facts(rd),
        "improved": _find_improved_runs(rd, saved),
        "course": course_reference(),
        "timings": _read_optional(rd.timings),
        # How the text names the artifacts it cites (relative to the run directory).
        "files": {k: p.relative_to(rd.root).as_posix() for k, p in (
            ("map", rd.map_json), ("pca", rd.pca_json), ("evidence", rd.evidence_json),
            ("train_state", rd.train_state), ("eval", rd.eval_json))},
    }
    facts["chance"] = _chance(facts["retrieval"]["map"], saved.get("data", {}))
    return facts


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


def _retrieval_facts(rd: RunDir) -> dict[str, Any]:
    out: dict[str, Any] = {"map": _read_optional(rd.map_json), "pca": _read_optional(rd.pca_json),
                           "evidence": _read_optional(rd.evidence_json)}
    combined = rd.top_figure(None)
    per_layer = [rd.top_figure(layer) for layer in LAYERS]
    # each layer's figure at a legible size; the layers side by side as one more figure
    out["figures"] = [p for p in per_layer if p.is_file()]
    out["combined_figure"] = combined if combined.is_file() else None
    out["pca_plot"] = rd.pca_plot if rd.pca_plot.is_file() else None
    return out


def _chance(maps: dict[str, Any] | None, data: dict[str, Any]) -> dict[str, Any] | None:
    """Chance levels of retrieval: the expected mAP of a random ranking (from map.json when it
    has it, else computed assuming equally large ood classes) and a random result's chance of
    being relevant."""
    n_ood = data.get("sizes", {}).get("ood")
    n_cls = len(data.get("ood_classes") or [])
    out: dict[str, Any] = {"map": None, "source": None, "precision": None,
                           "images": n_ood, "classes": n_cls}
    if n_ood and n_cls and n_ood >= 2:
        sizes = equal_class_sizes(n_ood, n_cls)
        out["precision"] = sum(s * (s - 1) for s in sizes) / (n_ood * (n_ood - 1))
        with contextlib.suppress(ValueError):  # no class of two or more images
            out.update(map=chance_map_of_sizes(sizes), source="computed")
    if maps and isinstance(maps.get("chance_map"), int | float):
        out.update(map=float(maps["chance_map"]), source="map")
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
