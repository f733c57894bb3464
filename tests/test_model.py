"""The ConvNet: shapes, parameter count, Keras 'same' padding, deterministic codes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralcodes.config import ModelConfig
from neuralcodes.model import (
    CODE_LAYERS,
    ConvNet,
    PaddedConv2d,
    SameMaxPool2d,
    count_parameters,
    same_conv2d,
)

TINY = ModelConfig(conv_widths=(4, 4, 4, 4, 4), fc_width=16)


@pytest.fixture(scope="module")
def full() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(190)


def test_full_model_has_the_assignment_parameter_count(full):
    assert count_parameters(full) == 40_516_382
    assert (full.fc6.in_features, full.fc6.out_features) == (256 * 8 * 8, 2048)
    assert (full.fc7.out_features, full.fc8.out_features) == (2048, 190)
    assert [c.kernel_size for c in (full.conv1, full.conv2, full.conv3, full.conv4, full.conv5)] \
        == [(4, 4), (5, 5), (3, 3), (3, 3), (3, 3)]


def test_full_model_output_and_code_shapes(full):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert full.eval()(x).shape == (2, 190)
        codes = full.codes(x)
    assert list(codes) == list(CODE_LAYERS)
    assert {k: tuple(v.shape) for k, v in codes.items()} == {"5": (2, 16384), "6": (2, 2048),
                                                             "7": (2, 2048)}


def test_conv_same_padding_puts_the_extra_row_bottom_right():
    conv = same_conv2d(1, 1, 4)  # 4x4 kernel: Keras pads 1 before and 2 after
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
        out = conv(torch.ones(1, 1, 6, 6))
    assert out.shape == (1, 1, 6, 6)
    # rows/cols covered at the top-left: -1..2 -> 3 real; at the bottom-right: 4..7 -> 2 real
    assert out[0, 0, 0, 0].item() == 9 and out[0, 0, -1, -1].item() == 4
    assert out[0, 0, 2, 2].item() == 16


def test_max_pool_same_padding_halves_and_never_picks_padding():
    pool = SameMaxPool2d(3, 2)
    x = -torch.arange(1.0, 65.0).view(1, 1, 8, 8)  # all negative: zero padding would win
    out = pool(x)
    assert out.shape == (1, 1, 4, 4)
    # 8 -> 4 needs 1 padded row/col, at the bottom/right: windows start at 0, 2, 4, 6
    assert torch.equal(out, F.max_pool2d(x, 3, 2, ceil_mode=True)[..., :4, :4])
    assert out.max().item() < 0
    assert ConvNet(3, TINY).pool(torch.zeros(1, 1, 64, 64)).shape[-1] == 32


def test_codes_are_deterministic_in_train_mode_and_match_forward():
    torch.manual_seed(0)
    model = ConvNet(5, ModelConfig(conv_widths=(4, 4, 4, 4, 4), fc_width=16, dropout=0.5))
    x = torch.rand(3, 3, 64, 64)
    model.train()
    with torch.no_grad():
        a, b = model.codes(x), model.codes(x)
        post = model.codes(x, relu=True)
        dropped = [model(x) for _ in range(2)]
    for k in CODE_LAYERS:
        assert torch.equal(a[k], b[k])  # no dropout in codes, even in train mode
        assert torch.equal(post[k], F.relu(a[k]))
    assert not torch.equal(dropped[0], dropped[1])  # forward in train mode does drop out
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), model.fc8(F.relu(a["7"])), atol=1e-6)
    assert set(model.codes(x, layers=("6",))) == {"6"}
    with pytest.raises(ValueError):
        model.codes(x, layers=("4",))


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("kernel", [3, 4, 5])
def test_torch_same_padding_equals_the_explicit_keras_pad(kernel):
    """nn.Conv2d(padding="same") puts the extra row/column bottom/right too: bit-equal outputs
    and gradients (for an even kernel torch warns about its copy; same_conv2d pads explicitly)."""
    torch.manual_seed(0)
    ours, torchs = same_conv2d(3, 8, kernel), nn.Conv2d(3, 8, kernel, padding="same")
    torchs.load_state_dict(ours.state_dict())
    assert isinstance(ours, PaddedConv2d) == (kernel % 2 == 0)
    x = torch.randn(2, 3, 13, 13)
    grads = []
    for conv in (ours, torchs):
        xi = x.clone().requires_grad_()
        out = conv(xi)
        out.backward(torch.ones_like(out))
        grads.append((out.detach(), xi.grad, conv.weight.grad))
    assert grads[0][0].shape == (2, 8, 13, 13)
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_feature_maps_are_the_conv_activations_and_agree_with_the_codes():
    torch.manual_seed(0)
    model = ConvNet(5, TINY).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.feature_maps(x, ("conv3", "conv4", "conv5", "pool5"), codes=("5", "6"))
        codes = model.codes(x, layers=("5", "6"))
        h = F.relu(model.pool(model.conv1(x)))
        h = F.relu(model.pool(model.conv2(h)))
        conv3 = F.relu(model.conv3(h))
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == {
        "conv3": (4, 16, 16), "conv4": (4, 16, 16), "conv5": (4, 16, 16), "pool5": (4, 8, 8),
        "code5": (256,), "code6": (16,)}
    assert torch.equal(maps["conv3"], conv3)
    assert (maps["conv5"] >= 0).all()  # after the ReLU
    # conv5 is the map before its pool: pooling it gives pool5, the ReLU of the layer-5 code
    assert torch.equal(model.pool(maps["conv5"]), maps["pool5"])
    assert torch.equal(maps["pool5"].flatten(1), F.relu(codes["5"]))
    assert torch.equal(maps["code5"], codes["5"]) and torch.equal(maps["code6"], codes["6"])
    assert list(model.feature_maps(x)) == ["conv5"]
    with pytest.raises(ValueError, match="conv9"):
        model.feature_maps(x, ("conv9",))
