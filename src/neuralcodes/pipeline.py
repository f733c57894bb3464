"""``neuralcodes run``: the whole study in one command.

    prepare -> train -> evaluate -> codes, figures, mAP, PCA study -> report

Each stage is skipped when its output for the same configuration already exists, so a run that was
interrupted at any stage continues with the same command. A run directory that holds a different
configuration is refused rather than silently mixed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from neuralcodes.config import Config, apply_override
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json
from neuralcodes.rundir import RunDir

#: Presets: overrides of the assignment's defaults.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The exact protocol of the assignment.
    "assignment": {},
    # A CPU smoke run: 20 classes (15 in-domain, 5 ood), 100 images each, 3 epochs, the full
    # architecture. Produces every artifact of the real run in a few minutes.
    "quick": {
        "data": {"max_classes": 20, "max_per_class": 100, "ood_classes": 5},
        "train": {"max_epochs": 3},
        "retrieval": {"pca_dims": (16, 32, 64, 128)},
    },
    # The assignment's model plus the two techniques the report proposes.
    "improved": {
        "train": {"augment": True},
        "model": {"batch_norm": True},
    },
}

#: Settings that may change between an interrupted run and its continuation.
RUNTIME_KEYS = {("train", "device"), ("train", "compile"), ("train", "threads"),
                ("train", "cpu_conv"),
                ("data", "cache_dir"), ("data", "source")}


def build_config(preset: str, overrides: list[str], source: str | None,
                 cache_dir: str | None) -> Config:
    """The configuration for a preset, with ``--set`` overrides and the data location applied."""
    if preset not in PRESETS:
        raise NeuralCodesError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    cfg = Config()
    for section, values in PRESETS[preset].items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    for item in overrides:
        apply_override(cfg, item)
    cfg.data.source = source
    cfg.data.cache_dir = cache_dir
    return cfg


def config_differences(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Settings in which ``cfg`` differs from a saved config (runtime-only settings ignored)."""
    new = Config.from_dict(saved).to_dict()
    cur = cfg.to_dict()
    diffs = []
    for section, values in cur.items():
        for key, value in values.items():
            if (section, key) in RUNTIME_KEYS:
                continue
            if new[section].get(key) != value:
                diffs.append(f"{section}.{key}: {new[section].get(key)!r} -> {value!r}")
    return diffs


def _stage(name: str) -> None:
    print(f"\n== {name} ==", flush=True)


def run(cfg: Config, out: str | Path, *, preset: str = "assignment",
        progress: bool = True) -> Path:
    """Run (or continue) the whole study into ``out``; returns the path of the report."""
    from neuralcodes import data, retrieval, train
    from neuralcodes.report import write_report

    rd = RunDir(Path(out))
    if rd.config.is_file():
        diffs = config_differences(read_json(rd.config)["config"], cfg)
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
    retrieval.evaluate_run(rd.root, progress=progress)

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


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``run`` subcommand."""
    p = sub.add_parser(
        "run", help="run the whole study: prepare, train, evaluate, retrieve, report",
        description="Run the whole study (prepare -> train -> evaluate -> codes, figures, mAP, "
        "PCA -> report). Finished stages are skipped, so the same command continues an "
        "interrupted run.")
    p.add_argument("--data", metavar="PATH", default=None,
                   help="Tiny ImageNet zip or extracted folder (default: download the official "
                        "archive)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="run directory (default: runs/<preset>)")
    p.add_argument("--preset", choices=list(PRESETS), default="assignment",
                   help="assignment: the exact protocol (default); quick: a CPU smoke run that "
                        "still makes every artifact; improved: + augmentation and batch norm")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="where the decoded image cache lives (default: $NEURALCODES_CACHE or "
                        "~/.cache/neuralcodes)")
    p.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append",
                   default=[], help="override any setting, e.g. --set train.precision=bf16 "
                                    "(repeatable; see config.py for all settings)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    cfg = build_config(args.preset, args.overrides, args.data, args.cache_dir)
    run(cfg, args.out or Path("runs") / args.preset, preset=args.preset,
        progress=not args.no_progress)
    return 0
