"""The commands and times the report quotes: how this run took, how to train it on, how to
measure the improving techniques (each a command that parses and works on the run's own data)."""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import Any

from neuralcodes.config import Config
from neuralcodes.presets import preset_config


def run_time(timings: dict[str, Any]) -> dict[str, Any]:
    """``minutes`` the run took here and ``took`` (what that counts, in words): the last
    ``neuralcodes run`` as measured from reading the data to the report (``whole_run`` in
    timings.json), else the sum of the timed stages (training, evaluation, retrieval)."""
    whole = timings.get("whole_run")
    if whole is not None:
        return {"minutes": whole / 60, "took": "for the whole run here (`neuralcodes run`, "
                "from reading the data to the report)"}
    stages = sum(timings.get("actual", {}).values())
    return {"minutes": stages / 60 or None,
            "took": "for the timed stages here (training, evaluation, retrieval)"}


def train_longer_command(facts: dict[str, Any]) -> str:
    """The command that trains this run on, on the same data, into the same run directory
    (its saved configuration with a higher epoch limit, and a higher patience where early
    stopping ended it), then redoes every later stage and the report."""
    cfg = Config.from_dict(facts["saved"]["config"])
    root = Path(facts["root"])
    with contextlib.suppress(ValueError):
        root = root.relative_to(Path.cwd())
    epochs = max(Config().train.max_epochs, 2 * cfg.train.max_epochs)
    state = facts.get("state") or {}
    patience = (f" --set train.patience={int(state.get('patience') or 0) + 1}"
                if state.get("stopped_early") else "")
    return (f"neuralcodes run --config {shlex.quote(f'{root.as_posix()}/config.json')} "
            f"--out {shlex.quote(root.as_posix())} --epochs {epochs}{patience}")


def improve_command(facts: dict[str, Any]) -> str:
    """The command that trains this run's twin with the two techniques, next to it: the same
    data, classes and epoch budget (the matching preset where this run is one)."""
    cfg = Config.from_dict(facts["saved"]["config"])
    source = cfg.data.source
    data = f" --data {shlex.quote(source)}" if source else ""
    twin = Path(facts["root"]).parent / f"{facts['run']}-improved"  # a sibling: found by the report
    with contextlib.suppress(ValueError):
        twin = twin.relative_to(Path.cwd())
    out = shlex.quote(twin.as_posix())
    for name, twin in (("quick", "quick-improved"), ("assignment", "improved")):
        preset = Config.from_dict(preset_config(name))
        budget = (preset.train.max_epochs, preset.train.patience) == (
            cfg.train.max_epochs, cfg.train.patience)  # resumable, yet part of the comparison
        if budget and not preset.differences(cfg) and not cfg.train.augment \
                and not cfg.model.batch_norm:
            return f"neuralcodes run --preset {twin}{data} --out {out}"
    config = shlex.quote(f"{facts['root']}/config.json")
    return (f"neuralcodes run --config {config} --set train.augment=true "
            f"--set model.batch_norm=true --out {out}")
