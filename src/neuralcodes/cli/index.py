"""``neuralcodes index``: the codes of a folder of the user's own images, for ``search``."""

from __future__ import annotations

import argparse

from neuralcodes.cli.common import (
    add_batch_size_option,
    add_config_options,
    add_progress_option,
    console_logging,
    run_config,
    run_lock,
)
from neuralcodes.retrieval.codes import VARIANT
from neuralcodes.retrieval.images import IMAGE_SUFFIXES
from neuralcodes.retrieval.indexing import FORWARD_BATCH
from neuralcodes.text import printable


def register(p: argparse.ArgumentParser) -> None:
    """The ``index`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "Compute the neural codes of every image under FOLDER (any size and common "
        "format; unreadable files are reported and skipped) into RUN/indexes/NAME. Each image "
        "is resized to 64x64, the size of the training images, without keeping its aspect "
        "ratio: a non-square image is squeezed, as the query of `neuralcodes search` is. Run "
        "it again to bring the index up to date: new files are added, deleted ones dropped, "
        "changed ones (size or modification time) recomputed, and one line says so (+12 new, "
        "-3 gone, 0 changed, 5,985 kept); an interrupted run resumes where it stopped.")
    p.add_argument("folder", help="the folder of images to index, subfolders included: every "
                   f"file ending in {', '.join(sorted(IMAGE_SUFFIXES))} (any case); the index "
                   "keeps each one's path relative to the folder's absolute root, and "
                   "`neuralcodes search` prints them absolute")
    p.add_argument("--run", required=True, help="trained run directory")
    p.add_argument("--name", help="the index's name, for `search --index NAME` (default: the "
                   "folder's name)")
    p.add_argument("--out", help="keep the index in this folder instead of RUN/indexes/NAME")
    p.add_argument("--relu", choices=tuple(VARIANT.values()),
                   help="default: the run's retrieval.relu")
    add_batch_size_option(p, FORWARD_BATCH)
    add_progress_option(p)
    add_config_options(p, "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes.files import require_folder
    from neuralcodes.retrieval import build_index
    from neuralcodes.retrieval.indexing import check_name
    from neuralcodes.runs import RunDir, TrainedRun

    cfg = run_config(args, RunDir.existing(args.run).read_config())
    relu = cfg.retrieval.relu if args.relu is None else args.relu == VARIANT[True]
    if args.out:
        require_folder(args.out, "index folder")  # before the lock: nothing written on a typo
    if args.name:
        check_name(args.name)
    with run_lock(args.run, "index"), console_logging():
        run = TrainedRun.open(args.run, cfg, progress=not args.no_progress,
                              batch_size=args.batch_size)
        update = build_index(args.folder, run, name=args.name, out=args.out, relu=relu,
                             batch_size=args.batch_size)
    for _, why in update.failed:  # names escaped: a file name cannot drive the terminal
        print(f"skipped: {printable(why)}")
    print(f"{printable(update.path)}: {update.summary()}; {update.count:,} "
          f"image{'' if update.count == 1 else 's'} indexed")
    return 0
