"""Evaluation: top-k accuracy by hand, split metrics in eval mode, the printed table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neuralcodes.config import ModelConfig
from neuralcodes.evaluation import format_eval_table
from neuralcodes.model import ConvNet
from neuralcodes.retrieval.metrics import topk_correct
from neuralcodes.training.batches import SplitData
from neuralcodes.training.measure import evaluate_split


def test_topk_correct_matches_a_hand_computed_example():
    logits = torch.tensor([
        [0.1, 0.9, 0.3, 0.2, 0.0, 0.5],  # ranking 1, 5, 2, 3, 0, 4
        [2.0, 1.0, 0.0, -1.0, -2.0, -3.0],  # ranking 0, 1, 2, 3, 4, 5
        [0.0, 0.0, 5.0, 4.0, 3.0, 2.0],  # ranking 2, 3, 4, 5, then 0/1
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # ranking 5, 4, 3, 2, 1, 0
    ])
    targets = torch.tensor([1, 2, 5, 0])
    # row 0: rank 1; row 1: rank 3; row 2: rank 4; row 3: rank 6
    assert topk_correct(logits, targets, (1, 2, 3, 5)) == {1: 1, 2: 1, 3: 2, 5: 3}
    assert topk_correct(logits, targets, (10,)) == {10: 4}  # k above the class count: all


def test_evaluate_split_is_eval_mode_cross_entropy_and_topk():
    torch.manual_seed(0)
    model = ConvNet(7, ModelConfig(conv_widths=(4, 4, 4, 4, 4), fc_width=16, dropout=0.5))
    images = torch.randint(0, 256, (10, 64, 64, 3), dtype=torch.uint8)
    labels = torch.randint(0, 7, (10,))
    model.train()
    m = evaluate_split(model, SplitData(images, labels), device=torch.device("cpu"),
                         batch_size=3)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits = model(images.permute(0, 3, 1, 2).float() / 255)
    ranks = np.argsort(-logits.numpy(), axis=1)
    pos = np.array([list(r).index(t) for r, t in zip(ranks, labels.tolist(), strict=True)])
    assert m["n"] == 10
    assert m["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert m["top1"] == pytest.approx(np.mean(pos < 1))
    assert m["top5"] == pytest.approx(np.mean(pos < 5))


def test_eval_table_lists_every_split():
    result = {"checkpoint": "best", "epoch": 7, "splits": {
        "train": {"loss": 1.23456, "top1": 0.5, "top5": 0.875, "n": 64},
        "val": {"loss": 2.0, "top1": 0.25, "top5": 0.75, "n": 8}}}
    lines = format_eval_table(result).splitlines()
    assert lines[0] == "checkpoint: best (epoch 7)"
    assert lines[2].split() == ["train", "1.2346", "50.00%", "87.50%", "64"]
    assert lines[3].split() == ["val", "2.0000", "25.00%", "75.00%", "8"]
