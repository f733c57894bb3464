"""Where and how tensors are computed: the choice of CPU convolution kernels."""

from __future__ import annotations

import pytest
import torch

from neuralcodes.errors import NeuralCodesError
from neuralcodes.runtime import nnpack_enabled

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_nnpack_only_for_fp32_cpu_without_compile(monkeypatch):
    monkeypatch.setattr(torch.backends.nnpack, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert nnpack_enabled("auto", CPU) and nnpack_enabled("nnpack", CPU)
    assert not nnpack_enabled("onednn", CPU)
    for setting in ("auto", "nnpack"):
        assert not nnpack_enabled(setting, CUDA)
        assert not nnpack_enabled(setting, CPU, precision="bf16")
        assert not nnpack_enabled(setting, CPU, compile=True)


def test_auto_leaves_intel_avx512_cpus_to_onednn(monkeypatch):
    from neuralcodes.kernels import cpu

    monkeypatch.setattr(torch.backends.nnpack, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(cpu, "cpu_vendor", lambda: "GenuineIntel")
    assert not nnpack_enabled("auto", CPU)
    monkeypatch.setattr(cpu, "cpu_vendor", lambda: "AuthenticAMD")  # Zen 4: AVX2's FMA rate
    assert nnpack_enabled("auto", CPU)
    assert nnpack_enabled("nnpack", CPU)


def test_missing_nnpack_and_bad_settings_are_clear_errors(monkeypatch):
    monkeypatch.setattr(torch.backends.nnpack, "is_available", lambda: False)
    assert not nnpack_enabled("auto", CPU)
    with pytest.raises(NeuralCodesError, match="no NNPACK"):
        nnpack_enabled("nnpack", CPU)
    with pytest.raises(NeuralCodesError, match="unknown cpu_conv 'winograd'"):
        nnpack_enabled("winograd", CPU)
