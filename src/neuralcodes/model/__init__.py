"""The assignment's ConvNet (architecture only), its Keras-'same' layers, the features it gives
by name (:mod:`~neuralcodes.model.features`, torch-free) and the model registry.

Names are imported on first use, so that the settings and the command line can read the
feature declaration without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ConvNet": "convnet", "count_parameters": "convnet", "layer_table": "convnet",
    "PaddedConv2d": "layers", "SameMaxPool2d": "layers", "same_conv2d": "layers",
    "same_padding": "layers",
    "create_model": "registry", "register_model": "registry", "model_spec": "registry",
    "checkpoint_meta": "registry", "model_names": "registry",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"neuralcodes.model.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'neuralcodes.model' has no attribute {name!r}")
