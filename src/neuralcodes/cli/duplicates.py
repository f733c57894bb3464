"""``neuralcodes duplicates``: groups of near-duplicate images in an index."""

from __future__ import annotations

import argparse

from neuralcodes import features
from neuralcodes.cli.common import add_config_options, run_config
from neuralcodes.text import printable


def register(p: argparse.ArgumentParser) -> None:
    """The ``duplicates`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "List the groups of images of an index whose codes are at least THRESHOLD "
        "similar (the centred cosine `neuralcodes search` shows for an index: 1 is the same "
        "image, about 0 unrelated), largest groups first, each image with its highest "
        "similarity to another of its group.")
    p.add_argument("run", help="trained run directory")
    p.add_argument("--index", required=True, help="the index's name or folder")
    p.add_argument("--threshold", type=float, default=0.95,
                   help="least similarity of two duplicates (default: 0.95)")
    p.add_argument("--layer", choices=features.code_names(), default="6",
                   help="codes to compare (default: 6)")
    add_config_options(p, "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes.errors import NeuralCodesError
    from neuralcodes.retrieval import Searcher, duplicate_groups
    from neuralcodes.runs import RunDir, TrainedRun

    if not -1 <= args.threshold <= 1:
        raise NeuralCodesError(f"--threshold must be within -1 and 1, got {args.threshold}")
    cfg = run_config(args, RunDir.existing(args.run).read_config())
    searcher = Searcher(TrainedRun.open(args.run, cfg, reader=True), index=args.index)
    groups = duplicate_groups(searcher, args.layer, args.threshold)
    for n, group in enumerate(groups, 1):
        print(f"group {n} ({len(group)} images):")
        for i, score in group:
            print(f"  {score:.4f}  {printable(searcher.paths[i])}")
    print(f"{len(groups):,} groups of near-duplicates ({sum(map(len, groups)):,} of "
          f"{len(searcher):,} images) at similarity >= {args.threshold} (layer {args.layer})")
    return 0
