"""``neuralcodes search``: the images most similar to IMAGE (ood set or a folder index)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from neuralcodes.cli.common import add_config_options, console_logging, run_config
from neuralcodes.text import printable

LAYERS = ("5", "6", "7")  # as neuralcodes.model.CODE_LAYERS


def register(p: argparse.ArgumentParser) -> None:
    """The ``search`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "Rank the ood set (or an index from `neuralcodes index`) by cosine "
        "similarity of neural codes to IMAGE and print paths and scores.")
    p.add_argument("image", help="a JPEG, PNG, WebP, ... of any size; it is resized to 64x64 "
                   "(the size of the training images) without keeping its aspect ratio, so a "
                   "non-square image is squeezed, as `neuralcodes index` does with its images")
    p.add_argument("--run", required=True, help="trained run directory")
    p.add_argument("--index", help="folder index file (default: the run's ood set)")
    p.add_argument("--layer", choices=LAYERS,
                   help="codes to rank by (default: 6 if the run's retrieval.layers has it, "
                   "else its first layer)")
    p.add_argument("-k", type=int, help="results to show (default: the run's retrieval.k)")
    p.add_argument("--figure", help="also save the query and its results as a PNG")
    add_config_options(p, "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes import imageio, lineage
    from neuralcodes.errors import NeuralCodesError
    from neuralcodes.retrieval import search
    from neuralcodes.runs import RunDir

    saved = RunDir.existing(args.run).read_config()
    cfg = run_config(args, saved)
    k = cfg.retrieval.k if args.k is None else args.k
    if k < 1:
        raise NeuralCodesError(f"-k must be positive, got {k}")
    if Path(args.image).is_dir():
        raise NeuralCodesError(f"{args.image} is a folder; search takes one image (to search "
                               "among a folder's images, index it with `neuralcodes index`)")
    layers = cfg.retrieval.layers
    layer = args.layer or ("6" if "6" in layers else layers[0])
    # an index holds one variant: its own unless retrieval.relu is set on this command
    relu = (None if args.index and cfg.retrieval.relu == saved.retrieval.relu
            else cfg.retrieval.relu)
    # everything that can fail runs before the first line is printed
    with console_logging():  # a line on stderr if the ood codes must be recomputed
        hits = search(args.image, args.run, index=args.index, layer=layer, k=k,
                      figure=args.figure, device=cfg.train.device,
                      precision=cfg.train.precision, relu=relu, progress=True)
    if relu is None:
        relu = bool((lineage.recorded(args.index) or {}).get("settings", {}).get("relu"))
    _, width, height = imageio.probe(args.image, formats=None)  # as displayed (EXIF)
    for note in imageio.query_notes(width, height):  # what was done to the query: said once
        print(f"neuralcodes: note: {printable(args.image)}: {note}", file=sys.stderr,
              flush=True)
    # every name is escaped (printable): a file name cannot drive the terminal
    print(f"layer {layer}, {'post' if relu else 'pre'}-ReLU codes, "
          f"{'index ' + printable(args.index) if args.index else 'the ood set'}:", flush=True)
    if len(hits) < k:  # exact search returns min(k, database size) results
        what = "indexed" if args.index else "ood"
        flag = "retrieval.k" if args.k is None else "-k"
        print(f"neuralcodes: note: {flag} {k} is more than the {len(hits)} {what} images; "
              f"showing all {len(hits)}", file=sys.stderr, flush=True)
    for h in hits:
        print(f"{h.rank:>3}  {h.score:.4f}  {printable(h.path)}"
              + (f"  ({printable(h.label)})" if h.label else ""))
    if args.figure:
        print(f"figure: {printable(args.figure)}")
    return 0
