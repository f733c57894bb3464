"""``neuralcodes codes``: the unit-length neural codes of one split of a trained run."""

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
from neuralcodes.retrieval.codes import DEFAULT_BATCH, RELU_CHOICES, SPLITS


def register(p: argparse.ArgumentParser) -> None:
    """The ``codes`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "Compute the neural codes (layers 5, 6, 7 and any other code layer in "
        "retrieval.layers; eval mode, L2-normalised) of one split "
        "of a trained run and save them to RUN/codes/<split>-<pre|post>relu.npz.")
    p.add_argument("run", help="run directory (runs/<name>)")
    p.add_argument("--split", default="ood", choices=SPLITS, help="which images (default: ood)")
    p.add_argument("--relu", default="both", choices=tuple(RELU_CHOICES),
                   help="pre-ReLU, post-ReLU or both (default: both; pre-ReLU is the study's "
                   "default code)")
    add_checkpoint_option(p)
    add_batch_size_option(p, DEFAULT_BATCH)
    p.add_argument("--force", action="store_true", help="recompute codes files even when they "
                   "record the current weights (sha256), precision and partition")
    add_progress_option(p)
    add_config_options(p, "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes.retrieval import CodeSet, run_codes
    from neuralcodes.runs import RunDir, TrainedRun

    cfg = run_config(args, RunDir.existing(args.run).read_config())
    with console_logging(), run_lock(args.run, "codes"):
        run = TrainedRun.open(args.run, cfg, checkpoint=args.checkpoint,
                              progress=not args.no_progress, batch_size=args.batch_size)
        paths = run_codes(run, args.split, RELU_CHOICES[args.relu], batch_size=args.batch_size,
                          force=args.force)
    for path in paths.values():
        code_set = CodeSet.load(path)
        dims = ", ".join(f"layer {k}: {v.shape[1]:,}" for k, v in code_set.layers.items())
        print(f"{path}: {len(code_set):,} images ({dims})")
    return 0
