"""``neuralcodes evaluate``: loss, top-1 and top-5 of a trained run on train/val/test."""

from __future__ import annotations

import argparse

from neuralcodes.cli.common import (
    add_batch_size_option,
    add_checkpoint_option,
    add_config_options,
    add_progress_option,
    console_logging,
    run_config,
    run_lock,
)
from neuralcodes.evaluation import EVAL_BATCH


def register(p: argparse.ArgumentParser) -> None:
    """The ``evaluate`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "Evaluate a trained run (eval mode, in the run's precision) on train, val "
        "and test; print a table and write eval.json and eval.csv into the run directory. "
        "Skipped when eval.json was computed from the same weights (sha256), precision and "
        "partition.")
    p.add_argument("run", help="the run directory (runs/<name>)")
    add_checkpoint_option(p)
    add_batch_size_option(p, EVAL_BATCH)
    p.add_argument("--force", action="store_true", help="evaluate even when eval.json is "
                   "up to date")
    add_progress_option(p)
    add_config_options(p, "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes.evaluation import evaluate, format_eval_table
    from neuralcodes.runs import RunDir, TrainedRun

    cfg = run_config(args, RunDir.existing(args.run).read_config())
    with console_logging(), run_lock(args.run, "evaluate"):
        run = TrainedRun.open(args.run, cfg, checkpoint=args.checkpoint,
                              progress=not args.no_progress)
        result = evaluate(run, batch_size=args.batch_size, force=args.force)
    print(format_eval_table(result))
    return 0
