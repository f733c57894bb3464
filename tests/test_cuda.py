"""The CUDA paths: training in each precision with the dataset held on the GPU, evaluation, codes,
torchrun with nccl and the throughput measurement. Skipped without a CUDA GPU.

On a GPU machine: ``python -m pytest tests/test_cuda.py`` (``benchmarks/device_check.sh`` runs it
with the CUDA throughput benchmark).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import LEARNER, TINY_MODEL, tiny_config, torchrun_train, weights
from neuralcodes.config import Config, TrainConfig
from neuralcodes.data import load_data
from neuralcodes.evaluation import evaluate
from neuralcodes.files import read_json
from neuralcodes.retrieval import extract_codes
from neuralcodes.runs import TrainedRun
from neuralcodes.training.batches import SplitData
from neuralcodes.training.loop import train
from neuralcodes.training.throughput import measure_throughput

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
CUDA = torch.device("cuda")


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_the_whole_split_sits_on_the_gpu_as_uint8(tiny_data_config):
    dataset, splits = load_data(tiny_data_config, progress=False)
    data = SplitData.load(dataset, splits, "train", CUDA)
    assert data.images.is_cuda and data.labels.is_cuda and data.images.dtype == torch.uint8
    assert tuple(data.images.shape[1:]) == (64, 64, 3) and len(data) == len(splits.train)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda_learns_in_each_precision(tmp_path, tiny_data_config, precision):
    cfg = tiny_config(tiny_data_config, LEARNER, lr=1e-3, batch_size=8, device="cuda",
                      precision=precision, threads=None)
    run = train(cfg, tmp_path / precision, progress=False)
    assert read_json(run.config)["config"]["train"]["precision"] == precision
    result = evaluate(TrainedRun.open(run.root, device="cuda", precision=precision,
                                     progress=False))
    chance = 1 / 4
    assert result["splits"]["train"]["top1"] >= 2 * chance
    assert all(np.isfinite(result["splits"][s]["loss"]) for s in ("train", "val", "test"))


def test_cuda_codes_match_cpu_codes(tmp_path, tiny_data_config):
    run = train(tiny_config(tiny_data_config, max_epochs=1, device="cuda", threads=None),
                  tmp_path / "run", progress=False)
    images = None
    codes = {}
    for device in ("cpu", "cuda"):
        loaded = TrainedRun.load(run.root, device=device)
        model, dataset, splits = loaded.model, loaded.dataset, loaded.splits
        images = dataset.images[np.sort(splits.ood)] if images is None else images
        codes[device] = extract_codes(model, images, device=device, progress=False)
    for layer in codes["cpu"]:  # unit vectors: cosine of each image's two codes (TF32 on GPU)
        cosine = (codes["cpu"][layer] * codes["cuda"][layer]).sum(axis=1)
        assert cosine.min() > 0.999, layer


def test_torchrun_with_nccl_on_one_gpu_matches_one_process(tmp_path, tiny_data_config):
    """DDP over nccl (a group of one: this machine may have one GPU) follows the plain
    single-process trajectory, as the CPU test does with two gloo processes."""
    cfg = tiny_config(tiny_data_config, max_epochs=2, patience=5, device="cuda", threads=None)
    train(cfg, tmp_path / "single", progress=False)
    torchrun_train(cfg, tmp_path / "ddp", 1)
    distributed = read_json(tmp_path / "ddp/config.json")["distributed"]
    assert distributed == {"world_size": 1, "backend": "nccl"}
    assert read_json(tmp_path / "single/config.json")["distributed"]["backend"] is None
    a = weights(tmp_path / "single/checkpoints/last.pt")
    b = weights(tmp_path / "ddp/checkpoints/last.pt")
    assert a.keys() == b.keys() and all(torch.isfinite(b[k]).all() for k in b)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-4, f"DDP weights differ from one process by up to {worst}"
    ra, rb = rows(tmp_path / "single"), rows(tmp_path / "ddp")
    assert [r["val_loss"] for r in ra] == pytest.approx([r["val_loss"] for r in rb], rel=1e-4)
    assert [r["train_loss"] for r in ra] == pytest.approx([r["train_loss"] for r in rb], rel=1e-4)


def test_measure_throughput_on_cuda():
    cfg = Config(model=TINY_MODEL, train=TrainConfig(batch_size=8, device="cuda"))
    assert measure_throughput(cfg, 3, steps=3, warmup=1) > 0
