"""Where and how tensors are computed: precisions, threads."""

from __future__ import annotations

import pytest
import torch

from neuralcodes.config import PRECISIONS
from neuralcodes.errors import NeuralCodesError
from neuralcodes.runtime import AUTOCAST_DTYPES, autocast, threads

CPU = torch.device("cpu")


def test_every_precision_has_an_autocast_dtype_and_others_are_refused():
    assert tuple(AUTOCAST_DTYPES) == PRECISIONS and AUTOCAST_DTYPES["fp32"] is None
    with autocast(CPU, "bf16"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(NeuralCodesError, match="unknown precision 'fp8'"):
        autocast(CPU, "fp8")


def test_threads_sets_and_restores_the_count():
    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with threads(None):
        assert torch.get_num_threads() == before
