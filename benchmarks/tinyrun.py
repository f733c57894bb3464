"""A generated, trained and evaluated run for the benchmarks and the screenshot script.

The images come from the tests' generator (``tests/helpers.py``: coloured, striped classes in the
official Tiny ImageNet layout), so no real image is needed or written anywhere else.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import make_tiny_imagenet  # noqa: E402
from neuralcodes.config import Config  # noqa: E402
from neuralcodes.data import prepare  # noqa: E402
from neuralcodes.evaluation import evaluate  # noqa: E402
from neuralcodes.runs import RunDir, TrainedRun  # noqa: E402
from neuralcodes.training.loop import train  # noqa: E402


def build_run(root: Path, *, classes: int, per_class: int, ood_classes: int,
              model: dict[str, Any] | None = None, training: dict[str, Any] | None = None
              ) -> Path:
    """Train and evaluate ``root/run`` on ``classes`` generated classes (the last
    ``ood_classes`` out-of-domain); ``model``/``training`` override config sections."""
    source = make_tiny_imagenet(root / "source", n_classes=classes, per_class=per_class)
    prepare(source, root / "cache", progress=False)
    cfg = Config.from_dict({
        "data": {"source": str(source), "cache_dir": str(root / "cache"),
                 "ood_classes": ood_classes},
        "model": model or {}, "train": {"device": "cpu", **(training or {})}})
    train(cfg, root / "run", progress=False)
    evaluate(TrainedRun.open(root / "run", device="cpu", progress=False))
    return root / "run"


def run_kernels(run: Path) -> dict[str, Any] | None:
    """The CPU convolution kernels the run trained with, as its config.json records them."""
    return RunDir.existing(run).saved().get("kernels")
