"""``--plan``: what ``run`` or ``train`` would do and how long it would take, without doing it.

:func:`plan` reads the data source's listing (no image is decoded, no cache is built), splits it
as the run would (:func:`neuralcodes.data.splits.split_arrays`), times a short probe in a
temporary folder (:func:`neuralcodes.estimate.probe_speeds`) and returns the plan's lines. It
creates nothing: no run directory, no cache, no download.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from neuralcodes.config import Config, DataConfig
from neuralcodes.data.splits import check_class_count, split_arrays
from neuralcodes.errors import NeuralCodesError
from neuralcodes.estimate import estimate_stages, expected_epochs, plan_lines, probe_speeds
from neuralcodes.runs import RunDir


def planned_sizes(cfg: DataConfig) -> tuple[dict[str, int], int, str]:
    """Split sizes, number of in-domain classes and where they come from, read from the
    source's file listing (or the official archive's known layout when it is not here yet)."""
    from neuralcodes import datasets as registry
    from neuralcodes.data.source import open_dataset

    if cfg.source is None:  # the archive's declared layout
        spec = registry.get(cfg.dataset)
        n, per_class = spec.classes or 0, spec.images_per_class or 0
        wnids = [f"n{i:08d}" for i in range(n)]
        labels = np.repeat(np.arange(n), per_class)
        origin = (f"the {spec.title} archive's layout ({n} classes x {per_class} images; not "
                  "downloaded yet)")
        if cfg.ood_wnids:
            raise NeuralCodesError("--plan with data.ood_wnids needs --data (the class list)")
    else:
        src, spec = open_dataset(cfg.source, cfg.dataset)
        with src:
            listing = spec.listing(src)
        wnids = listing.classes
        labels = np.array([it.label for it in listing.items], dtype=np.int64)
        origin = f"the file listing of {cfg.source}, before decoding"
        check_class_count(len(wnids), cfg, str(cfg.source))
    splits = split_arrays(labels, wnids, cfg)
    return splits.sizes(), len(splits.in_classes), origin


def plan(cfg: Config, out: str | Path, *, command: str, preset: str | None = None) -> list[str]:
    """The plan of ``command`` ('run' or 'train') with ``cfg`` into ``out``, as lines."""
    from neuralcodes.training.records import is_finished

    sizes, n_classes, origin = planned_sizes(cfg.data)
    t = cfg.train
    rd = RunDir(Path(out))
    head = f"Preset '{preset}': " if preset else ""
    lines = [f"Plan of `neuralcodes {command}` into {rd.root}/ (nothing is created by --plan).",
             f"{head}{n_classes} in-domain classes: {sizes['train']:,} training, "
             f"{sizes['val']:,} validation, {sizes['test']:,} test images; {sizes['ood']:,} "
             f"out-of-domain images for retrieval (from {origin}).",
             f"Training: batch {t.batch_size}, at most {t.max_epochs} epochs, early stopping "
             f"with patience {t.patience} (expected to stop after about {expected_epochs(cfg)}),"
             f" precision {t.precision}, device {t.device}."]
    if rd.config.is_file():
        diffs = rd.read_config().differences(cfg)
        if diffs:
            lines.append(f"{rd.root} holds a run with another configuration ("
                         + "; ".join(diffs) + "): it would be refused; choose another --out.")
            return lines
        lines.append(f"{rd.root} exists: finished stages will be skipped.")
    if is_finished(rd.root):
        lines.append("Training is finished there: it would be skipped.")
    with tempfile.TemporaryDirectory(prefix="neuralcodes-plan-") as tmp:
        speeds = probe_speeds(cfg, n_classes, Path(tmp))
    stages = estimate_stages(cfg, sizes, speeds)
    if command == "train":
        stages = [e for e in stages if e.name == "train"]
    lines.append("Expected time on this machine (measured by a short probe):")
    lines += plan_lines(cfg, stages, speeds)
    return lines
