"""The model as training and inference use it: a ConvNet on a device, its weights loaded, its
convolution kernels chosen (:mod:`neuralcodes.kernels.choice`)."""

from __future__ import annotations

from typing import Any

import torch

from neuralcodes.config import Config
from neuralcodes.data.cache import cache_root
from neuralcodes.kernels import choice as kernels
from neuralcodes.kernels.cpu import configure as configure_cpu
from neuralcodes.model.convnet import ConvNet
from neuralcodes.model.registry import create_model, model_spec
from neuralcodes.runtime import INFER_BATCH


def build_model(cfg: Config, num_classes: int, device: torch.device, *,
                weights: dict[str, Any] | None = None, inference: bool = False,
                batch_size: int | None = None, precision: str | None = None,
                spec: tuple[str, dict[str, Any]] | None = None) -> ConvNet:
    """The network ``spec`` (registry name and arguments: :func:`create_model`; default: what
    ``cfg.model`` describes) on ``device`` with ``cfg``'s kernels and memory format, from
    fresh (seeded) weights or ``weights`` (a state dict).

    ``inference=True`` gives the eval-mode model of a trained run (channels-last, no
    torch.compile) for batches of ``batch_size`` (default :data:`INFER_BATCH`) in ``precision``
    (default the run's); otherwise the training settings ``cfg.train`` choose. The convolution
    kernels follow ``train.cpu_conv`` (``auto``: measured here once and cached,
    :mod:`neuralcodes.kernels.choice`); the choice is ``model.kernel_choice``. Process-wide CPU
    settings (:func:`neuralcodes.kernels.cpu.configure`) are applied.
    """
    t = cfg.train
    configure_cpu(device)
    name, args = spec or model_spec(cfg.model)
    model = create_model(name, num_classes=num_classes, **args)
    if weights is not None:
        model.load_state_dict(weights)
    model = model.to(device)
    if inference:
        model.eval()
    channels_last = inference or t.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    choice = kernels.choose(
        model, setting=t.cpu_conv, device=device, precision=precision or t.precision,
        batch=batch_size or (INFER_BATCH if inference else t.batch_size), train=not inference,
        compile=t.compile and not inference, channels_last=channels_last,
        cache_dir=cache_root(cfg.data.cache_dir))
    kernels.apply(model, choice)
    return model
