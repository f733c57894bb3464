"""The optimizer and one optimizer step (the model: :func:`neuralcodes.model.build.build_model`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neuralcodes.config import TrainConfig
from neuralcodes.runtime import autocast, to_input
from neuralcodes.training.batches import augment_batch


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
