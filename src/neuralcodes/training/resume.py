"""Continuing a run: which settings may change, and going back to the kept weights.

A plain resume (``--resume RUN``) continues ``last.pt`` exactly; only the settings marked
resumable in :mod:`neuralcodes.config` may change. ``--from best`` rewinds to the weights that
``best.pt`` keeps (the way on after a NaN loss): the later epochs are dropped, Adam starts afresh,
and the learning rate may change as well.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from neuralcodes.config import Config, describe_resumable
from neuralcodes.errors import NeuralCodesError
from neuralcodes.model.checkpoint import load_checkpoint
from neuralcodes.runs import RunDir
from neuralcodes.training.early_stopping import EarlyStopping


def check_resumable(saved: Config, cfg: Config, start_from: str = "last") -> list[str]:
    """A resumed run may only change the settings marked resumable in the config, and the
    learning rate when it goes back to its kept weights (``start_from="best"``). Returns every
    change, resumable ones included, for the record."""
    may = {"train.lr"} if start_from == "best" else set()
    diffs = [d for d in saved.differences(cfg) if d.split(":")[0] not in may]
    if diffs:
        allowed = describe_resumable()
        extra = "" if start_from == "best" else " (and train.lr with --from best)"
        raise NeuralCodesError(f"cannot change {diffs[0]} when resuming; only {allowed} may "
                               f"change{extra}")
    return saved.differences(cfg, ignore_resumable=False)


def rewind_to_kept(run: RunDir, patience: int) -> dict[str, Any]:
    """A resume state at the end of the epoch whose weights ``best.pt`` keeps: its weights,
    the metrics and early-stopping state up to that epoch, no optimizer state (Adam restarts)."""
    kept = load_checkpoint(run.best_checkpoint)
    epoch = int(kept["epoch"])
    last = load_checkpoint(run.last_checkpoint) if run.last_checkpoint.is_file() else {}
    rows = [r for r in last.get("metrics", []) if r["epoch"] <= epoch]
    stopping = EarlyStopping(patience)
    for r in rows:
        stopping.update(r["epoch"], r["val_loss"])
    return {"model": kept["model"], "epoch": epoch, "step": 0,
            "early_stopping": dataclasses.asdict(stopping), "metrics": rows}
