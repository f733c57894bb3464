"""The model as training and inference use it, the optimizer, and one optimizer step."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from neuralcodes.config import Config, TrainConfig
from neuralcodes.data.cache import cache_root
from neuralcodes.kernels import choice as kernels
from neuralcodes.kernels.cpu import configure as configure_cpu
from neuralcodes.model import ConvNet, create_model, model_spec
from neuralcodes.runtime import INFER_BATCH, autocast, to_input
from neuralcodes.training.batches import augment_batch


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


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """Adam with the protocol's lr, epsilon and amsgrad flag (betas 0.9/0.999, as Keras).

    The fused implementation (one kernel per step instead of a dozen passes over the 40M
    parameters) is the same update and 3-4x faster on a CPU; it is used where this torch has it.
    """
    kwargs = {"lr": t.lr, "eps": t.adam_eps, "amsgrad": t.amsgrad}
    try:
        return torch.optim.Adam(model.parameters(), **kwargs, fused=True)
    except RuntimeError:  # no fused kernel for this device
        return torch.optim.Adam(model.parameters(), **kwargs)


def train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, images: torch.Tensor, labels: torch.Tensor,
               t: TrainConfig, device: torch.device,
               scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a uint8 NHWC batch; returns (summed loss, number correct).

    The loss is the batch's summed cross-entropy times ``scale`` (1 / global batch size, times the
    world size under DDP, whose gradient average then equals the global batch's mean gradient).
    """
    if t.augment:
        images = augment_batch(images)
    x = to_input(images, device, t.channels_last)
    with autocast(device, t.precision):
        logits = net(x)
    loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss_sum * scale).backward()
    scaler.step(optimizer)
    scaler.update()
    with torch.no_grad():
        return loss_sum.detach(), (logits.argmax(1) == labels).sum()
