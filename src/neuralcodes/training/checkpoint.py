"""Checkpoint files: written atomically, read back with one clear error for a bad file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import atomic_path

#: Bumped when the checkpoint layout changes incompatibly.
CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` to ``path`` atomically: the previous file stays whole until the rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU; a missing, truncated or foreign file is a one-line error."""
    if not path.is_file():
        raise NeuralCodesError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise NeuralCodesError(f"{path}: not a readable neuralcodes checkpoint ({e})") from e
