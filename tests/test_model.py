"""The ConvNet: shapes, parameter count, Keras 'same' padding, deterministic codes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralcodes.config import ModelConfig
from neuralcodes.errors import NeuralCodesError
from neuralcodes.features import code_names, paper_codes
from neuralcodes.model import (
    ConvNet,
    PaddedConv2d,
    SameMaxPool2d,
    count_parameters,
    same_conv2d,
)

CODES = paper_codes()

TINY = ModelConfig(conv_widths=(4, 4, 4, 4, 4), fc_width=16)


@pytest.fixture(scope="module")
def full() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(190, ModelConfig())


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
        codes = full.forward_intermediates(x, CODES)
    assert CODES == ("5", "6", "7") and code_names()[:3] == CODES
    assert list(codes) == list(CODES)
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
        a, b = model.forward_intermediates(x, CODES), model.forward_intermediates(x, CODES)
        dropped = [model(x) for _ in range(2)]
    for k in CODES:
        assert torch.equal(a[k], b[k])  # no dropout in codes, even in train mode
    assert not torch.equal(dropped[0], dropped[1])  # forward in train mode does drop out
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), model.fc8(F.relu(a["7"])), atol=1e-6)
    assert set(model.forward_intermediates(x, ("6",))) == {"6"}
    with pytest.raises(NeuralCodesError, match="unknown feature '4'"):
        model.forward_intermediates(x, ("4",))


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


def test_features_by_name_are_the_conv_activations_and_agree_with_the_codes():
    """One call gives conv maps (before and after their pool) and codes from one pass."""
    torch.manual_seed(0)
    model = ConvNet(5, TINY).eval()
    x = torch.rand(2, 3, 64, 64)
    names = ("conv1", "pool1", "conv3", "conv4", "conv5", "pool5", "5", "6")
    with torch.no_grad():
        out = model.forward_intermediates(x, names)
        h = F.relu(model.pool(model.conv1(x)))
        conv1 = F.relu(model.conv1(x))
        h = F.relu(model.pool(model.conv2(h)))
        conv3 = F.relu(model.conv3(h))
    shapes = {k: tuple(v.shape[1:]) for k, v in out.items()}
    assert shapes == {"conv1": (4, 64, 64), "pool1": (4, 32, 32), "conv3": (4, 16, 16),
                      "conv4": (4, 16, 16), "conv5": (4, 16, 16), "pool5": (4, 8, 8),
                      "5": (256,), "6": (16,)}
    assert all(model.feature_shape(k) == v for k, v in shapes.items())  # declared = computed
    assert torch.equal(out["conv1"], conv1) and torch.equal(out["conv3"], conv3)
    assert torch.equal(model.pool(out["conv1"]), out["pool1"])  # conv1: before its pool
    assert (out["conv5"] >= 0).all()  # after the ReLU
    # conv5 is the map before its pool: pooling it gives pool5, the ReLU of the layer-5 code
    assert torch.equal(model.pool(out["conv5"]), out["pool5"])
    assert torch.equal(out["pool5"].flatten(1), F.relu(out["5"]))
    with pytest.raises(NeuralCodesError, match="conv9"):
        model.forward_intermediates(x, ("conv9",))


def test_the_forward_pass_stops_after_the_last_tap_it_needs():
    model = ConvNet(5, TINY).eval()
    calls: list[str] = []
    for name in ("conv3", "fc6", "fc7"):
        getattr(model, name).register_forward_hook(lambda m, i, o, n=name: calls.append(n))
    with torch.no_grad():
        model.forward_intermediates(torch.rand(1, 3, 64, 64), ("conv3",))
    assert calls == ["conv3"]  # neither fc6 nor fc7 ran


def test_a_checkpoint_rebuilds_its_network_by_name():
    from neuralcodes.model import checkpoint_meta, create_model

    model = create_model("convnet-bn", num_classes=3, conv_widths=[4, 4, 4, 4, 8], fc_width=16,
                         dropout=0.5)
    meta = checkpoint_meta(model, ["n1", "n2", "n3"], ["a", "b", "c"])
    again = create_model(meta["name"], num_classes=meta["num_classes"], **meta["args"])
    again.load_state_dict(model.state_dict())  # same layers, batch norm included
    assert isinstance(again.bn3, nn.BatchNorm2d) and again.args == model.args
    assert meta["classes"] == {"ids": ["n1", "n2", "n3"], "names": ["a", "b", "c"]}
    with pytest.raises(NeuralCodesError, match="unknown model 'resnet'"):
        create_model("resnet", num_classes=3)
