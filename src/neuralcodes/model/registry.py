"""The model registry: a network is built by name and constructor arguments, so a checkpoint
that records both (with its classes) rebuilds its network alone (as timm's ``create_model`` and
cirtorch's ``init_network(meta)``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from neuralcodes.errors import NeuralCodesError
from neuralcodes.model.convnet import ARGS, ConvNet

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``create_model(name, ...)`` call ``factory(num_classes=..., **args)``."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = factory


def model_names() -> tuple[str, ...]:
    return tuple(_MODELS)


def create_model(name: str, *, num_classes: int, **args: Any) -> nn.Module:
    """A fresh network ``name`` with ``args``; it remembers both (``model_name``, ``args``)."""
    if name not in _MODELS:
        raise NeuralCodesError(f"unknown model '{name}' (known: {', '.join(_MODELS)})")
    try:
        return _MODELS[name](num_classes=num_classes, **args)
    except TypeError as e:
        raise NeuralCodesError(f"model '{name}': {e}") from None


def model_spec(model_cfg: Any) -> tuple[str, dict[str, Any]]:
    """(name, constructor arguments) of the network the ``model`` settings describe."""
    args = {k: getattr(model_cfg, k) for k in ARGS if k != "batch_norm"}
    args["conv_widths"] = list(args["conv_widths"])
    return ("convnet-bn" if model_cfg.batch_norm else "convnet"), args


def checkpoint_meta(model: nn.Module, class_ids: list[str], class_names: list[str]
                    ) -> dict[str, Any]:
    """What a checkpoint records to rebuild ``model``: its name, arguments and classes (the
    in-domain classes in label order)."""
    args = {k: v for k, v in model.args.items() if k != "batch_norm"}
    args["conv_widths"] = list(args["conv_widths"])
    return {"name": model.model_name, "args": args, "num_classes": model.num_classes,
            "image_size": model.image_size,
            "classes": {"ids": list(class_ids), "names": list(class_names)}}


register_model("convnet", lambda num_classes, **a: ConvNet(num_classes, **a, batch_norm=False))
register_model("convnet-bn", lambda num_classes, **a: ConvNet(num_classes, **a, batch_norm=True))
