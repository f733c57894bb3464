"""The versions recorded with every cache and run."""

from __future__ import annotations

import platform

import numpy as np
import torch

from neuralcodes import __version__


def versions() -> dict[str, str]:
    """Versions of neuralcodes, torch, numpy and Python, and the platform string."""
    return {"neuralcodes": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
