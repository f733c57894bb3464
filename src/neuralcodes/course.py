"""The course's reference results (Keras solution of the assignment), shipped as package data.

``course_reference.json`` is the one source of truth for these numbers; the report and the web
app both read it through :func:`course_reference`. Its ``epochs`` rows use the same keys as a
run's ``metrics.jsonl`` (``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ...), its
``evaluation`` the keys of ``eval.json`` (``loss``, ``top1``, ``top5``) and its ``map`` maps a
layer (the paper's codes: :func:`neuralcodes.features.paper_codes`) to the mAP of its
pre-ReLU codes over all 5,000 ood queries.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("course_reference.json").read_text("utf-8")
    return json.loads(text)


def course_reference() -> dict[str, Any]:
    """The course's reference results (a fresh copy: callers may modify it)."""
    return copy.deepcopy(_load())
