"""``neuralcodes run``: the whole study in one command.

    prepare -> train -> evaluate -> codes, figures, mAP, PCA study -> report

Each stage is skipped when its output for the same configuration already exists, so a run that was
interrupted at any stage continues with the same command. A run directory that holds a different
configuration is refused rather than silently mixed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from neuralcodes.config import Config
from neuralcodes.errors import NeuralCodesError
from neuralcodes.runs import RunDir

#: Presets: overrides of the assignment's defaults.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The exact protocol of the assignment.
    "assignment": {},
    # A CPU smoke run: 20 classes (15 in-domain, 5 ood), 100 images each, 3 epochs, the full
    # architecture. Produces every artifact of the real run in a few minutes.
    "quick": {
        "data": {"max_classes": 20, "max_per_class": 100, "ood_classes": 5},
        "train": {"max_epochs": 3},
        "retrieval": {"pca_dims": [16, 32, 64, 128]},
    },
    # The assignment's model plus the two techniques the report proposes.
    "improved": {
        "train": {"augment": True},
        "model": {"batch_norm": True},
    },
}

def preset_config(preset: str) -> dict[str, Any]:
    """The config dict of a preset: the assignment's settings with the preset's changes."""
    if preset not in PRESETS:
        raise NeuralCodesError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    d = Config().to_dict()
    return {s: {**v, **PRESETS[preset].get(s, {})} for s, v in d.items()}


def _stage(name: str) -> None:
    print(f"\n== {name} ==", flush=True)


def run(cfg: Config, out: str | Path, *, preset: str = "assignment",
        progress: bool = True) -> Path:
    """Run (or continue) the whole study into ``out``; returns the path of the report."""
    from neuralcodes import data, retrieval, train
    from neuralcodes.report import write_report

    rd = RunDir(Path(out))
    if rd.config.is_file():
        diffs = rd.read_config().differences(cfg)
        if diffs:
            raise NeuralCodesError(f"{rd.root} holds a run with another configuration ("
                                   + "; ".join(diffs) + "); choose another --out")
    start = time.perf_counter()

    _stage("prepare")
    dataset, splits = data.load_data(cfg.data, progress=progress)
    _print_plan(cfg, rd, preset, len(splits.train), len(splits.in_classes))

    _stage("train")
    if train.is_finished(rd.root):
        print(f"skipped: {rd.root} already holds a finished training run")
    else:
        train.train(cfg, rd.root, resume=rd.last_checkpoint.is_file(), progress=progress)

    _stage("evaluate")
    best = rd.best_checkpoint.stat().st_mtime
    if rd.eval_json.is_file() and rd.eval_json.stat().st_mtime >= best:
        print(f"skipped: {rd.eval_json} is up to date")
    else:
        train.evaluate(rd.root, progress=progress, device=cfg.train.device)

    _stage("retrieval: codes, figures, mAP, PCA study")
    retrieval.run_study(rd.root, progress=progress)

    _stage("report")
    md, html = write_report(rd.root)
    minutes = (time.perf_counter() - start) / 60
    print(f"\nDone in {minutes:.1f} min. Report: {md}\n                     {html}")
    return md


def _print_plan(cfg: Config, rd: RunDir, preset: str, n_train: int, n_classes: int) -> None:
    """Say what will happen, with a time estimate from a short throughput probe."""
    from neuralcodes import train

    print(f"Preset '{preset}': {n_classes} in-domain classes, {n_train:,} training images, "
          f"batch {cfg.train.batch_size}, at most {cfg.train.max_epochs} epochs with early "
          f"stopping (patience {cfg.train.patience}), precision {cfg.train.precision}; "
          f"output in {rd.root}/")
    if train.is_finished(rd.root):
        return
    ips = train.probe_throughput(cfg, n_classes)
    epoch_min = n_train / ips / 60
    most = cfg.train.max_epochs
    print(f"Throughput probe: {ips:.0f} img/s -> about {epoch_min:.1f} min per epoch, at most "
          f"{most} epochs (~{most * epoch_min:.0f} min); early stopping usually ends it sooner.",
          flush=True)
