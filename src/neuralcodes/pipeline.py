"""``neuralcodes run``: the whole study in one command.

    prepare -> train -> evaluate -> codes, figures, mAP, PCA study -> methods study -> report

Training is skipped when it finished (training on when ``--epochs`` raised the limit, unless early
stopping ended it); every later stage is skipped exactly when its files record the fingerprint it
would write now (:mod:`neuralcodes.lineage`), so a run that was interrupted at any stage continues
with the same command, and new weights reach everything downstream. A run directory that holds a
different configuration is refused rather than silently mixed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neuralcodes import lineage
from neuralcodes.config import Config
from neuralcodes.errors import NeuralCodesError
from neuralcodes.estimate import (
    estimate_stages,
    plan_lines,
    probe_speeds,
    seconds_per_epoch,
)
from neuralcodes.files import read_json, write_json
from neuralcodes.runs import RunDir, TrainedRun

log = logging.getLogger(__name__)

def _stage(name: str) -> None:
    log.info(f"\n== {name} ==")


def run(cfg: Config, out: str | Path, *, preset: str = "assignment",
        progress: bool = True) -> Path:
    """Run (or continue) the whole study into ``out``; returns the path of the report."""
    from neuralcodes import data, retrieval
    from neuralcodes.evaluation import evaluate
    from neuralcodes.report import write_report
    from neuralcodes.retrieval.methods.stage import run_methods
    from neuralcodes.training.loop import train
    from neuralcodes.training.records import training_left

    rd = RunDir(Path(out))
    if rd.config.is_file():
        diffs = rd.read_config().differences(cfg)
        if diffs:
            raise NeuralCodesError(f"{rd.root} holds a run with another configuration ("
                                   + "; ".join(diffs) + "); choose another --out")
    start = time.perf_counter()
    timings = _Timings(rd)

    # no stage header before the data is read: a bad --data ends in its one error line alone
    dataset, splits = data.load_data(cfg.data, progress=progress)
    _check_database(cfg, len(splits.ood))
    _stage("prepared")
    _log_plan(cfg, rd, preset, splits.sizes(), len(splits.in_classes), timings)

    _stage("train")
    todo, why = training_left(rd.root, cfg.train.max_epochs, cfg.train.patience)
    if why:
        log.info(why)
    if todo:
        with timings.stage("train"):
            train(cfg, rd.root, resume=rd.last_checkpoint.is_file(), progress=progress)

    # every later stage reruns exactly when what made its files changed (neuralcodes.lineage);
    # the trained run is opened once and passed to each
    trained = TrainedRun.open(rd.root, cfg, progress=progress)
    _stage("evaluate")
    with timings.stage("evaluate", [rd.eval_json]):
        evaluate(trained)

    _stage("retrieval: codes, figures, mAP, PCA study")
    with timings.stage("retrieval", [rd.map_json, rd.top_json(cfg.retrieval.k),
                                     rd.evidence_json, rd.pca_json]):
        retrieval.run_study(trained, methods=False)

    if cfg.retrieval.method_families():
        _stage("methods study: pooled conv descriptors, whitening, re-ranking")
        with timings.stage("methods", [rd.methods_file("json")]):
            run_methods(trained)

    _stage("report")
    timings.whole_run(time.perf_counter() - start)
    md, html = write_report(rd.root, config=cfg)
    minutes = (time.perf_counter() - start) / 60
    log.info(f"\nDone in {minutes:.1f} min. Report: {md}\n                     {html}")
    return md


def _check_database(cfg: Config, n_ood: int) -> None:
    """The retrieval settings against the ood images there are (the configuration checks them
    only where the dataset fixes its images per class)."""
    r = cfg.retrieval
    if r.k > n_ood - 1 or r.figure_queries > n_ood:
        raise NeuralCodesError(f"retrieval.k ({r.k}) and retrieval.figure_queries "
                               f"({r.figure_queries}) must fit the {n_ood} out-of-domain images "
                               "(k at most one fewer): lower them with --set retrieval.k=N "
                               "--set retrieval.figure_queries=N, or add images")


class _Timings:
    """``timings.json``: each stage's estimated and measured seconds (the plan, checked)."""

    def __init__(self, rd: RunDir) -> None:
        self.path = rd.timings
        self.data = read_json(self.path) if self.path.is_file() else {"estimate": {},
                                                                        "actual": {}}
        self.ran = False  # whether any stage did its work in this invocation

    def estimated(self, speeds: dict[str, Any], stages: dict[str, float]) -> None:
        self.data["probe"] = speeds
        self.data["estimate"] = stages
        write_json(self.path, self.data)

    def whole_run(self, seconds: float) -> None:
        """This invocation of ``run`` from reading the data to the report (the report reads it
        as the whole run's time; stages it skipped took no time); kept as it was when every
        stage was skipped, so that an unchanged run leaves its report unchanged too."""
        if self.ran or "whole_run" not in self.data:
            self.data["whole_run"] = round(seconds, 2)
            write_json(self.path, self.data)

    @contextlib.contextmanager
    def stage(self, name: str, outputs: list[Path] | None = None) -> Iterator[None]:
        """Time the block; with ``outputs``, only when it rewrote one of them (a skipped
        stage keeps the time it took when it ran)."""
        before = [lineage.recorded(p) for p in outputs or []]
        began = time.perf_counter()
        yield
        if outputs is None or before != [lineage.recorded(p) for p in outputs]:
            self.ran = True
            self.data["actual"][name] = round(time.perf_counter() - began, 2)
            write_json(self.path, self.data)


def _log_plan(cfg: Config, rd: RunDir, preset: str, sizes: dict[str, int], n_classes: int,
                timings: _Timings) -> None:
    """Say what will happen, with the expected time of each stage from a short probe."""
    from neuralcodes.training.records import training_left

    log.info(f"Preset '{preset}': {n_classes} in-domain classes, {sizes['train']:,} training "
          f"images, batch {cfg.train.batch_size}, at most {cfg.train.max_epochs} epochs with "
          f"early stopping (patience {cfg.train.patience}), precision {cfg.train.precision}; "
          f"output in {rd.root}/")
    if not training_left(rd.root, cfg.train.max_epochs, cfg.train.patience)[0]:
        return
    speeds = probe_speeds(cfg, n_classes, rd.root)
    stages = estimate_stages(cfg, sizes, speeds)
    log.info("Expected time on this machine (measured by a short probe):")
    for line in plan_lines(cfg, stages, speeds):
        log.info(line)
    timings.estimated(dataclasses.asdict(speeds),
                      {e.name: round(e.seconds, 2) for e in stages}
                      | {"train_epoch": round(seconds_per_epoch(stages, cfg), 3)}
                      | {f"{e.name}_max": round(e.upper, 2) for e in stages if e.upper})
