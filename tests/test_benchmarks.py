"""The benchmarks' plain-PyTorch baseline computes the project's function (so it is a fair one),
and the ceiling benchmark counts the ConvNet's arithmetic right."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from baselines import plain_convnet, plain_input, plain_train_step  # noqa: E402
from ceiling import flops, layer_inputs  # noqa: E402
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


def test_ceiling_counts_the_full_convnets_multiply_adds_per_image():
    """2.03 GFLOP per image forward, from the architecture written out here by hand."""
    model = ConvNet(190, ModelConfig()).to(memory_format=torch.channels_last)
    inputs = layer_inputs(model, 1, torch.float32)
    assert list(inputs) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert inputs["conv3"].shape == (1, 192, 16, 16) and inputs["fc6"].shape == (1, 16384)
    assert inputs["conv2"].is_contiguous(memory_format=torch.channels_last)
    layers = dict(model.named_modules())
    by_hand = {"conv1": 64 * 64 * 96 * 3 * 16, "conv2": 32 * 32 * 192 * 96 * 25,
               "conv3": 16 * 16 * 288 * 192 * 9, "conv4": 16 * 16 * 288 * 288 * 9,
               "conv5": 16 * 16 * 256 * 288 * 9, "fc6": 16384 * 2048, "fc7": 2048 * 2048,
               "fc8": 2048 * 190}
    for name, x in inputs.items():
        assert flops(layers[name], x) == 2 * by_hand[name], name
    assert round(sum(2 * v for v in by_hand.values()) / 1e9, 2) == 2.03
