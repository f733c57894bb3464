"""``neuralcodes index``: the codes of a folder of the user's own images, for ``search``."""

from __future__ import annotations

import argparse

from neuralcodes.cli.common import (
    add_batch_size_option,
    add_config_options,
    add_progress_option,
    run_config,
    run_lock,
)
from neuralcodes.retrieval.codes import DEFAULT_BATCH, VARIANT
from neuralcodes.retrieval.images import IMAGE_SUFFIXES
from neuralcodes.text import printable


def register(p: argparse.ArgumentParser) -> None:
    """The ``index`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "Compute the neural codes of every image under FOLDER (any size and common "
        "format; unreadable files are reported and skipped). Each image is resized to 64x64, "
        "the size of the training images, without keeping its aspect ratio: a non-square "
        "image is squeezed, as the query of `neuralcodes search` is.")
    p.add_argument("folder", help="the folder of images to index, subfolders included: every "
                   f"file ending in {', '.join(sorted(IMAGE_SUFFIXES))} (any case); the index "
                   "keeps their paths, which `neuralcodes search --index` prints")
    p.add_argument("--run", required=True, help="trained run directory")
    p.add_argument("--out", help="index file (default: RUN/retrieval/index-<folder>.npz)")
    p.add_argument("--relu", choices=tuple(VARIANT.values()),
                   help="default: the run's retrieval.relu")
    add_batch_size_option(p, DEFAULT_BATCH)
    add_progress_option(p)
    add_config_options(p, "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes.files import require_folder
    from neuralcodes.retrieval import build_index
    from neuralcodes.runs import RunDir, TrainedRun

    cfg = run_config(args, RunDir.existing(args.run).read_config())
    relu = cfg.retrieval.relu if args.relu is None else args.relu == VARIANT[True]
    if args.out:
        require_folder(args.out, "index file")  # before the lock: nothing written on a typo
    with run_lock(args.run, "index"):
        run = TrainedRun.open(args.run, cfg, progress=not args.no_progress,
                              batch_size=args.batch_size)
        path, n, failed = build_index(args.folder, run, out=args.out, relu=relu,
                                      batch_size=args.batch_size)
    for _, why in failed:  # names escaped: a file name cannot drive the terminal
        print(f"skipped: {printable(why)}")
    print(f"{printable(path)}: {n:,} images indexed"
          + (f", {len(failed)} unreadable" if failed else ""))
    return 0
