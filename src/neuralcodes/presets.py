"""The presets of ``neuralcodes run --preset``: named changes to the assignment's settings."""

from __future__ import annotations

from typing import Any

from neuralcodes.config import Config
from neuralcodes.errors import NeuralCodesError

#: Presets: overrides of the assignment's defaults.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The exact protocol of the assignment.
    "assignment": {},
    # A CPU smoke run: 20 classes (15 in-domain, 5 ood), 100 images each, 3 epochs, the full
    # architecture. Produces every artifact of the real run in a few minutes.
    "quick": {
        "data": {"max_classes": 20, "max_per_class": 100, "ood_classes": 5},
        "train": {"max_epochs": 3},
        "retrieval": {"pca_dims": [16, 32, 64, 128]},
    },
    # The assignment's model plus the two techniques the report proposes.
    "improved": {
        "train": {"augment": True},
        "model": {"batch_norm": True},
    },
}
#: The quick run with the two techniques: same classes, images and epochs as ``quick``, so the
#: pair measures the techniques' effect in minutes on a CPU.
PRESETS["quick-improved"] = {
    s: {**PRESETS["quick"].get(s, {}), **PRESETS["improved"].get(s, {})}
    for s in ("data", "train", "model", "retrieval")}


def preset_config(preset: str) -> dict[str, Any]:
    """The config dict of a preset: the assignment's settings with the preset's changes."""
    if preset not in PRESETS:
        raise NeuralCodesError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    d = Config().to_dict()
    return {s: {**v, **PRESETS[preset].get(s, {})} for s, v in d.items()}
