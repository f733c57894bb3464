"""Evaluation, codes and the query paths (search, index, web) compute in the run's precision;
``--precision`` overrides it; bf16 and fp32 agree on top-1 and mAP (issue 14 point 3).

What was computed in which dtype is observed directly: a global forward hook records the output
dtype of every ``nn.Linear`` (bf16 under bf16 autocast, fp32 otherwise).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import SHARED_ZIP, TINY_MODEL, make_tiny_imagenet, tiny_config
from neuralcodes import cli
from neuralcodes.config import Config, DataConfig, ModelConfig, TrainConfig
from neuralcodes.evaluation import evaluate
from neuralcodes.files import read_json
from neuralcodes.retrieval import CodeSet, Searcher, build_index, evaluate_codes, run_codes
from neuralcodes.retrieval.collection import FolderIndex
from neuralcodes.runs import RunDir, TrainedRun
from neuralcodes.training.loop import train


@contextlib.contextmanager
def linear_dtypes() -> Iterator[set[torch.dtype]]:
    """The output dtypes of every ``nn.Linear`` forward pass inside the block."""
    seen: set[torch.dtype] = set()

    def hook(module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(module, nn.Linear) and isinstance(output, torch.Tensor):
            seen.add(output.dtype)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ConvNet trained for one epoch in bf16 (``train.precision=bf16``)."""
    root = tmp_path_factory.mktemp("bf16-run")
    source = make_tiny_imagenet(root / "src", 6, 20)
    data = DataConfig(source=str(source), cache_dir=str(root / "cache"), ood_classes=2)
    out = root / "run"
    train(tiny_config(data, TINY_MODEL, precision="bf16", max_epochs=1), out, progress=False)
    assert RunDir(out).read_config().train.precision == "bf16"
    return out


def _no_codes(run: Path) -> None:
    shutil.rmtree(RunDir(run).root / "codes", ignore_errors=True)


def test_cli_evaluate_uses_the_run_precision_and_records_it(bf16_run, capsys):
    with linear_dtypes() as seen:
        assert cli.main(["evaluate", str(bf16_run), "--no-progress", "--device", "cpu"]) == 0
    assert seen == {torch.bfloat16}
    assert read_json(RunDir(bf16_run).eval_json)["precision"] == "bf16"
    assert "(epoch 1, bf16)" in capsys.readouterr().out

    with linear_dtypes() as seen:  # an explicit --precision overrides the run's
        assert cli.main(["evaluate", str(bf16_run), "--no-progress", "--device", "cpu",
                         "--precision", "fp32"]) == 0
    assert seen == {torch.float32}
    assert read_json(RunDir(bf16_run).eval_json)["precision"] == "fp32"
    assert RunDir(bf16_run).read_config().train.precision == "bf16"  # the run is unchanged


def test_library_evaluate_defaults_to_the_run_precision(bf16_run):
    with linear_dtypes() as seen:
        result = evaluate(TrainedRun.open(bf16_run, device="cpu", progress=False))
    assert seen == {torch.bfloat16} and result["precision"] == "bf16"


def test_cli_codes_are_computed_in_the_run_precision_and_record_it(bf16_run):
    _no_codes(bf16_run)
    with linear_dtypes() as seen:
        assert cli.main(["codes", str(bf16_run), "--no-progress", "--device", "cpu"]) == 0
    assert seen == {torch.bfloat16}
    rd = RunDir(bf16_run)
    bf16 = {relu: CodeSet.load(rd.codes("ood", relu)) for relu in (False, True)}
    assert {c.precision for c in bf16.values()} == {"bf16"}

    # kept as they are when asked again in the same precision ...
    with linear_dtypes() as seen:
        assert cli.main(["codes", str(bf16_run), "--no-progress", "--device", "cpu"]) == 0
    assert seen == set()
    # ... and recomputed when another precision is asked for
    with linear_dtypes() as seen:
        assert cli.main(["codes", str(bf16_run), "--no-progress", "--device", "cpu",
                         "--precision", "fp32", "--relu", "pre"]) == 0
    assert seen == {torch.float32}
    fp32 = CodeSet.load(rd.codes("ood", False))
    assert fp32.precision == "fp32"
    assert not np.array_equal(fp32.layers["7"], bf16[False].layers["7"])  # really recomputed
    np.testing.assert_allclose(fp32.layers["7"], bf16[False].layers["7"], atol=0.05)
    assert CodeSet.load(rd.codes("ood", True)).precision == "bf16"  # the other variant kept


def test_codes_file_without_a_recorded_precision_still_loads(tmp_path):
    layers = {"6": np.eye(3, dtype=np.float32)}
    CodeSet(layers, np.arange(3), np.zeros(3), False).save(tmp_path / "old.npz")
    assert CodeSet.load(tmp_path / "old.npz").precision is None
    CodeSet(layers, np.arange(3), np.zeros(3), False, precision="bf16").save(tmp_path / "n.npz")
    assert CodeSet.load(tmp_path / "n.npz").precision == "bf16"


def test_web_query_path_runs_in_the_run_precision(bf16_run):
    from neuralcodes.web.service import ServedRun

    _no_codes(bf16_run)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    # computes the missing ood codes: in bf16
    served = ServedRun(TrainedRun.open(bf16_run, device="cpu", progress=False))
    assert served.ood.codes.precision == "bf16"
    with linear_dtypes() as seen:
        result = served.search_image(image, 3, "ood")
    assert seen == {torch.bfloat16}
    assert [len(layer["hits"]) for layer in result["layers"]] == [3] * len(served.layers)

    fp32 = ServedRun(TrainedRun.open(bf16_run, device="cpu", precision="fp32",
                                     progress=False))  # an explicit override
    assert fp32.ood.codes.precision == "fp32"  # the database follows the queries' precision
    with linear_dtypes() as seen:
        fp32.search_image(image, 3, "ood")
    assert seen == {torch.float32}


def test_search_and_index_use_the_run_precision(bf16_run, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    with linear_dtypes() as seen:
        update = build_index(folder, TrainedRun.open(bf16_run, device="cpu", progress=False))
    path = update.path
    assert update.count == 3 and seen == {torch.bfloat16}
    assert FolderIndex(path).precision == "bf16"

    image = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    with linear_dtypes() as seen:
        Searcher(TrainedRun.open(bf16_run, device="cpu"), index=path).query_codes(image, "6")
    assert seen == {torch.bfloat16}
    # an index holds codes of one precision: a query in another is refused, in one line
    assert cli.main(["search", str(folder / "0.png"), "--run", str(bf16_run), "--index",
                     str(path), "--device", "cpu", "--precision", "fp32"]) == 2
    fp32 = build_index(folder, TrainedRun.open(bf16_run, device="cpu", precision="fp32",
                                               progress=False), out=tmp_path / "fp32-index").path
    with linear_dtypes() as seen:
        assert cli.main(["search", str(folder / "0.png"), "--run", str(bf16_run),
                         "--index", str(fp32), "--device", "cpu", "--precision", "fp32"]) == 0
    assert seen == {torch.float32}


# --------------------------------------------------------------------------- real images

AGREEMENT = 0.005  # |fp32 - bf16| allowed for top-1 (test split) and each layer's mAP (ood)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ZIP.is_file(), reason=f"shared real-image zip absent: {SHARED_ZIP}")
def test_bf16_agrees_with_fp32_on_real_images(tmp_path):
    """The same fp32-trained weights evaluated in fp32 and in bf16: top-1 on the test split and
    the ood mAP of each layer differ by at most 0.005."""
    # a small test split would make one flipped prediction exceed 0.005: train on 40% and
    # test on 50% of 15 classes x 200 images (1,500 test images); 5 ood classes x 200 images
    data = DataConfig(source=str(SHARED_ZIP), cache_dir=str(tmp_path / "cache"),
                      max_classes=20, ood_classes=5, max_per_class=200,
                      fractions=(0.4, 0.1, 0.5))
    model = ModelConfig(conv_widths=(8, 16, 16, 16, 16), fc_width=64, dropout=0.0,
                        batch_norm=True)
    cfg = Config(data=data, model=model, train=TrainConfig(
        lr=3e-3, max_epochs=2, batch_size=50, device="cpu", precision="fp32"))
    out = tmp_path / "run"
    start = time.perf_counter()
    train(cfg, out, progress=False)
    trained_s = time.perf_counter() - start

    evals = {p: evaluate(TrainedRun.open(out, device="cpu", precision=p, progress=False)
                         )["splits"]["test"] for p in ("fp32", "bf16")}
    maps = {}
    for p in ("fp32", "bf16"):
        path = run_codes(TrainedRun.open(out, device="cpu", precision=p, progress=False), "ood",
                         relu=False)[False]
        codes = CodeSet.load(path)
        assert codes.precision == p
        maps[p] = {layer: m.map for layer, m in evaluate_codes(codes).items()}
    top1 = {p: e["top1"] for p, e in evals.items()}
    print(f"\nprecision agreement ({evals['fp32']['n']} test images, "
          f"{len(codes)} ood images; trained in {trained_s:.0f} s): top-1 {top1}, mAP {maps}")
    assert top1["fp32"] > 1.5 / 15  # it learned something (15 in-domain classes)
    assert abs(top1["fp32"] - top1["bf16"]) <= AGREEMENT
    for layer in maps["fp32"]:
        assert abs(maps["fp32"][layer] - maps["bf16"][layer]) <= AGREEMENT, layer

