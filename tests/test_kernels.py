"""CPU kernels: NNPACK convolutions swapped into a plain model, and when they are used."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuralcodes.config import ModelConfig
from neuralcodes.kernels.nnpack import (
    NNPACK_MIN_BATCH,
    NnpackConv2d,
    eligible_layers,
    nnpack_applies,
    nnpack_layers,
    use_nnpack,
)
from neuralcodes.model import ConvNet

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


# ----------------------------------------------------------------------------- NNPACK kernels

needs_nnpack = pytest.mark.skipif(not torch.backends.nnpack.is_available(),
                                  reason="this torch build has no NNPACK")


@needs_nnpack
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_nnpack_convolution_matches_the_direct_one_and_its_gradients(kernel, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    direct = nn.Conv2d(6, 10, kernel, padding="same")
    fast = use_nnpack(nn.Sequential(nn.Conv2d(6, 10, kernel, padding="same")))[0]
    assert isinstance(fast, NnpackConv2d)
    fast.load_state_dict(direct.state_dict())
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
    # answered in the input's memory format, as PyTorch's own convolution answers
    assert outs[0].is_contiguous(memory_format=fmt) and outs[1].is_contiguous(memory_format=fmt)
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
    params = list(model.parameters())
    assert use_nnpack(model) is model
    assert [isinstance(c, NnpackConv2d) for c in
            (model.conv1, model.conv2, model.conv3, model.conv4, model.conv5)] \
        == [False, True, True, True, True]
    assert nnpack_layers(model) == ["conv2", "conv3", "conv4", "conv5"]
    # the very same parameters: an optimizer built before the swap keeps working
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
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
    use_nnpack(model, False)
    assert nnpack_layers(model) == [] and type(model.conv2) is nn.Conv2d
    assert torch.equal(logits_and_grads()[0], direct[0])
    with torch.no_grad():  # smaller batches stay with the default kernels
        assert torch.equal(model(small), small_logits)


def test_nnpack_applies_only_to_fp32_on_a_cpu_without_compile():
    assert nnpack_applies(CPU)
    assert not nnpack_applies(CUDA)
    assert not nnpack_applies(CPU, precision="bf16")
    assert not nnpack_applies(CPU, compile=True)


@needs_nnpack
def test_use_nnpack_runs_only_the_named_layers_in_nnpack():
    model = ConvNet(5, ModelConfig(conv_widths=(8, 8, 8, 8, 8), fc_width=16))
    assert eligible_layers(model) == ["conv2", "conv3", "conv4", "conv5"]  # not the 4x4 conv1
    use_nnpack(model, layers=["conv3", "conv5"])
    assert nnpack_layers(model) == ["conv3", "conv5"]
    use_nnpack(model, layers=["conv2"])  # the others go back to the default kernels
    assert nnpack_layers(model) == ["conv2"] and type(model.conv3) is nn.Conv2d
