"""``neuralcodes train``: train the ConvNet into a run directory (or continue one)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from neuralcodes.cli.common import (
    add_config_options,
    add_progress_option,
    config_from_args,
    console_logging,
    run_lock,
)
from neuralcodes.runs import CHECKPOINTS


def register(p: argparse.ArgumentParser) -> None:
    """The ``train`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "Train the ConvNet with the assignment's protocol into runs/<name>/ (any "
        "setting can be changed with --set). Under torchrun it trains with "
        "DistributedDataParallel.")
    where = p.add_argument_group("run directory")
    where.add_argument("--name", help="run name: the run goes to <runs-dir>/<name> "
                       "(default: convnet-<date>-<time>)")
    where.add_argument("--runs-dir", default="runs", metavar="DIR",
                       help="parent of named runs (default: runs)")
    where.add_argument("--out", metavar="DIR", help="the run directory itself (instead of --name)")
    where.add_argument("--resume", metavar="RUN", help="continue this run from its last.pt (only "
                       "the settings marked resumable in config.py may change)")
    where.add_argument("--from", dest="start_from", choices=CHECKPOINTS, default="last",
                       help="with --resume: last (default) continues exactly where it stopped; "
                       "best goes back to the kept weights (best.pt) with a fresh Adam, and "
                       "train.lr may change too (after a NaN loss)")
    p.add_argument("--plan", action="store_true",
                   help="print the plan (data sizes, expected training time on this machine "
                        "from a short probe) and exit without creating anything")
    add_progress_option(p)
    add_config_options(p, "--data", "--cache-dir", "--url", "--epochs", "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes.runs import RunDir
    from neuralcodes.training.loop import train

    base = RunDir.existing(args.resume).saved()["config"] if args.resume else None
    cfg = config_from_args(args, base)
    if args.resume:
        out = Path(args.resume)
    elif args.out:
        out = Path(args.out)
    else:
        out = Path(args.runs_dir) / (args.name or time.strftime("convnet-%Y%m%d-%H%M%S"))
    if args.plan:
        from neuralcodes.plan import plan

        print("\n".join(plan(cfg, out, command="train")))
        return 0
    with console_logging(), run_lock(out, "train"):
        run = train(cfg, out, resume=bool(args.resume), progress=not args.no_progress,
                    start_from=args.start_from)
    print(run.root)
    return 0
