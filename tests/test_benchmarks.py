"""The benchmarks' plain-PyTorch baseline computes the project's function (so it is a fair one)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baselines import plain_convnet, plain_input, plain_train_step  # noqa: E402
from neuralcodes.config import ModelConfig  # noqa: E402
from neuralcodes.model import ConvNet  # noqa: E402
from neuralcodes.runtime import to_input  # noqa: E402

WIDTHS = (4, 6, 8, 8, 5)


def test_plain_sequential_with_the_projects_weights_computes_the_same_logits():
    torch.manual_seed(0)
    ours = ConvNet(3, ModelConfig(conv_widths=WIDTHS, fc_width=16)).eval()
    plain = plain_convnet(3, WIDTHS, 16).eval()
    layers = {1: ours.conv1, 4: ours.conv2, 7: ours.conv3, 9: ours.conv4, 11: ours.conv5,
              16: ours.fc6, 19: ours.fc7, 21: ours.fc8}
    for i, layer in layers.items():
        plain[i].load_state_dict(layer.state_dict())
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(plain(plain_input(images)), ours(to_input(images)),
                                   rtol=1e-4, atol=1e-5)


def test_plain_train_step_runs():
    step = plain_train_step(3, "fp32")
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    assert torch.isfinite(step(images, torch.tensor([0, 2])))
