"""``neuralcodes run``: the whole study in one command (see :mod:`neuralcodes.pipeline`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from neuralcodes.cli.common import add_config_options, add_progress_option, config_from_args
from neuralcodes.presets import PRESETS, preset_config


def register(p: argparse.ArgumentParser) -> None:
    """The ``run`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "Run the whole study (prepare -> train -> evaluate -> codes, figures, mAP, "
        "PCA, methods beyond the paper (retrieval.methods) -> report). Finished stages are "
        "skipped, so the same command continues an interrupted run.")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="run directory (default: runs/<preset>)")
    p.add_argument("--preset", choices=list(PRESETS), default="assignment",
                   help="assignment: the exact protocol (default); quick: a CPU smoke run that "
                        "still makes every artifact; improved: + augmentation and batch norm; "
                        "quick-improved: quick + the same two techniques (compare it with quick "
                        "in minutes)")
    p.add_argument("--plan", action="store_true",
                   help="print the plan (data sizes; the expected time of training, "
                        "evaluation, retrieval and the methods study on this machine, from a "
                        "short probe) and exit without creating anything")
    add_progress_option(p)
    add_config_options(p, "--data", "--cache-dir", "--url", "--epochs", "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes.cli.common import console_logging, run_lock
    from neuralcodes.pipeline import run

    cfg = config_from_args(args, preset_config(args.preset))
    out = args.out or Path("runs") / args.preset
    if args.plan:
        from neuralcodes.plan import plan

        print("\n".join(plan(cfg, out, command="run", preset=args.preset)))
        return 0
    with console_logging(), run_lock(out, "run"):
        report = run(cfg, out, preset=args.preset, progress=not args.no_progress)
    print(report)  # stdout: the report's path (the log went to stderr)
    return 0
