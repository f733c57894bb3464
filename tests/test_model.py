"""The ConvNet: shapes, parameter count, Keras 'same' padding, deterministic codes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neuralcodes.config import ModelConfig
from neuralcodes.model import (
    CODE_LAYERS,
    NNPACK_MIN_BATCH,
    ConvNet,
    SameConv2d,
    SameMaxPool2d,
    count_parameters,
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
    conv = SameConv2d(1, 1, 4)  # 4x4 kernel: Keras pads 1 before and 2 after
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


# ----------------------------------------------------------------------------- NNPACK kernels

needs_nnpack = pytest.mark.skipif(not torch.backends.nnpack.is_available(),
                                  reason="this torch build has no NNPACK")


@needs_nnpack
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_nnpack_convolution_matches_the_direct_one_and_its_gradients(kernel, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    direct, fast = SameConv2d(6, 10, kernel), SameConv2d(6, 10, kernel)
    fast.load_state_dict(direct.state_dict())
    fast.nnpack = True
    x = torch.randn(NNPACK_MIN_BATCH, 6, 12, 12).contiguous(memory_format=fmt)
    grad = torch.randn(NNPACK_MIN_BATCH, 10, 12, 12)
    outs, grads = [], []
    for conv in (direct, fast):
        xi = x.clone().requires_grad_()
        out = conv(xi)
        out.backward(grad)
        outs.append(out.detach())
        grads.append([xi.grad, conv.weight.grad, conv.bias.grad])
    assert outs[1].shape == (NNPACK_MIN_BATCH, 10, 12, 12)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    for g_fast, g_direct in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(g_fast, g_direct, rtol=1e-4, atol=1e-4)
    # it really is another algorithm: Winograd/FFT round differently from a direct convolution
    assert not torch.equal(outs[1], outs[0])


@needs_nnpack
def test_use_nnpack_switches_conv2_to_conv5_and_keeps_the_function():
    torch.manual_seed(0)
    model = ConvNet(5, ModelConfig(conv_widths=(8, 8, 8, 8, 8), fc_width=16, dropout=0.0))
    x, y = torch.rand(NNPACK_MIN_BATCH, 3, 64, 64), torch.arange(NNPACK_MIN_BATCH) % 5

    def logits_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    direct = logits_and_grads()
    assert model.use_nnpack() is model
    assert [c.nnpack for c in (model.conv1, model.conv2, model.conv3, model.conv4, model.conv5)] \
        == [False, True, True, True, True]
    fast, again = logits_and_grads(), logits_and_grads()
    torch.testing.assert_close(fast[0], direct[0], rtol=1e-4, atol=1e-5)
    for g_fast, g_direct in zip(fast[1], direct[1], strict=True):
        torch.testing.assert_close(g_fast, g_direct, rtol=1e-3, atol=1e-6)
    assert torch.equal(fast[0], again[0])  # deterministic: resumed runs stay bit-equal
    assert all(torch.equal(a, b) for a, b in zip(fast[1], again[1], strict=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # not fp32: the default kernels serve
        assert model(x).dtype == torch.bfloat16
    small = x[:NNPACK_MIN_BATCH - 1]
    with torch.no_grad():
        small_logits = model(small)
    model.use_nnpack(False)
    assert torch.equal(logits_and_grads()[0], direct[0])
    with torch.no_grad():  # smaller batches stay with the default kernels
        assert torch.equal(model(small), small_logits)
