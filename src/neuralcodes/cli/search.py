"""``neuralcodes search``: the images most similar to each IMAGE (ood set or a folder index)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Set
from typing import Any

from neuralcodes import features
from neuralcodes.cli.common import add_config_options, console_logging, run_config
from neuralcodes.text import printable

#: The pooling methods of neuralcodes.retrieval.methods.REGISTRY (the CLI does not import the
#: library to build its parser; tests/test_methods.py checks they agree).
POOLING_METHODS = ("mac", "spoc", "spoc-centre", "gem", "gem-fit", "rmac")

SCORES = ("Scores: in an index, the cosine similarity of codes centred by the mean training code "
          "(layer 5 also reduced by PCA), which spreads over -1..1: 1 is the same image, about 0 "
          "unrelated, below 0 unlike; in the ood set, the plain cosine of the paper's codes. A "
          "hit that is the query itself (the same file, or an identical code) is marked.")


def register(p: argparse.ArgumentParser) -> None:
    """The ``search`` command's description and arguments (its summary: ``cli.COMMANDS``)."""
    p.description = (
        "Rank the ood set (or an index from `neuralcodes index`) by the similarity "
        "of neural codes to each IMAGE and print rank, score and path. " + SCORES)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="a JPEG, PNG, WebP, ... of any size, or a glob in quotes ('shots/*.jpg', "
                   "'**' for subfolders); several are searched with one model load; each is "
                   "resized to 64x64 (the size of the training images) without keeping its "
                   "aspect ratio, so a non-square image is squeezed, as `neuralcodes index` does "
                   "with its images")
    p.add_argument("--run", required=True, help="trained run directory")
    p.add_argument("--index", help="an index's name (from `neuralcodes index`, under "
                   "RUN/indexes/) or folder (default: the run's ood set)")
    p.add_argument("--layer", choices=features.code_names(),  # read now: registered ones too
                   help="codes to rank by (default: 6 if the run's retrieval.layers has it, "
                   "else its first layer): " + "; ".join(
                       f"{f.name}: {f.meaning}" for f in features.features("code")))
    p.add_argument("--method", metavar="NAME",
                   help="rank by a pooled descriptor of the conv5 map instead of a layer's "
                   f"codes (the ood set only): {', '.join(POOLING_METHODS)} (see "
                   "RUN/retrieval/methods.json for how each does; gem-fit needs it)")
    p.add_argument("--why", metavar="PNG",
                   help="with --method: save each hit beside the query, each cell of their "
                   "conv5 maps shaded by its share of the score (why they are similar)")
    p.add_argument("-k", type=int, help="results to show (default: the run's retrieval.k)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--figure", help="also save the queries and their results as a PNG")
    add_config_options(p, "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes import imageio
    from neuralcodes.errors import NeuralCodesError
    from neuralcodes.retrieval import Searcher, search_many
    from neuralcodes.retrieval.images import expand_images
    from neuralcodes.runs import RunDir, TrainedRun

    saved = RunDir.existing(args.run).read_config()
    cfg = run_config(args, saved)
    k = cfg.retrieval.k if args.k is None else args.k
    if k < 1:
        raise NeuralCodesError(f"-k must be positive, got {k}")
    images = expand_images(args.images)
    if args.method is not None or args.why:
        return _method_search(args, cfg, images, k)
    layers = cfg.retrieval.layers
    layer = args.layer or ("6" if "6" in layers else layers[0])
    # an index holds one variant: its own unless retrieval.relu is set on this command
    relu = (None if args.index and cfg.retrieval.relu == saved.retrieval.relu
            else cfg.retrieval.relu)
    # everything that can fail runs before the first line is printed
    with console_logging():  # a line on stderr if the ood codes must be recomputed
        run = TrainedRun.open(args.run, cfg, reader=True)
        searcher = Searcher(run, index=args.index, relu=relu)
        hits = search_many(images, layer=layer, k=k, figure=args.figure, searcher=searcher)
    notes = []
    for image in images:
        _, width, height = imageio.probe(image, formats=None)  # as displayed (EXIF)
        notes.append(imageio.query_notes(width, height))
        for note in notes[-1]:  # what was done to the query: said once
            print(f"neuralcodes: note: {printable(image)}: {note}", file=sys.stderr, flush=True)
    where = f"index {printable(args.index)}" if args.index else "the ood set"
    if len(searcher) < k:  # exact search returns min(k, database size) results
        what = "indexed" if args.index else "ood"
        flag = "retrieval.k" if args.k is None else "-k"
        print(f"neuralcodes: note: {flag} {k} is more than the {len(searcher)} {what} images; "
              f"showing all {len(searcher)}", file=sys.stderr, flush=True)
    gone = {h.path for row in hits for h in row if args.index and not os.path.lexists(h.path)}
    if gone:  # the folder changed since it was indexed
        root = searcher.folder.root  # type: ignore[union-attr]
        print(f"neuralcodes: note: {len(gone)} of these files are no longer there (marked "
              f"[gone]); `neuralcodes index {shlex.quote(printable(root))} --run "
              f"{shlex.quote(printable(args.run))}` brings the index up to date",
              file=sys.stderr, flush=True)
    variant = "post" if searcher.relu else "pre"
    if args.json:
        print(json.dumps({
            "layer": layer, "relu": variant, "database": "ood" if not args.index else
            printable(args.index), "database_size": len(searcher), "k": k,
            "score": "cosine" if not args.index else "centred cosine",
            "queries": [{"image": printable(image), "notes": n, "hits": [
                {"rank": h.rank, "score": h.score, "path": printable(h.path),
                 "label": h.label, "same": h.same, "gone": h.path in gone} for h in row]}
                for image, n, row in zip(images, notes, hits, strict=True)]}, indent=1))
        return 0
    # every name is escaped (printable): a file name cannot drive the terminal
    print(f"layer {layer}, {variant}-ReLU codes, {where}:", flush=True)
    for image, row in zip(images, hits, strict=True):
        if len(images) > 1:
            print(f"query {printable(image)}:")
        _print_hits(row, gone)
    if args.figure:
        print(f"figure: {printable(args.figure)}")


def _print_hits(hits: list[Any], gone: Set[str] = frozenset()) -> None:
    """One line per hit; names escaped (a file name cannot drive the terminal), the query
    itself and files deleted since indexing marked."""
    for h in hits:
        print(f"{h.rank:>3}  {h.score:.4f}  {printable(h.path)}"
              + (f"  ({printable(h.label)})" if h.label else "")
              + (f"  [{h.same}]" if h.same else "") + ("  [gone]" if h.path in gone else ""))


def _method_search(args: argparse.Namespace, cfg: Any, images: list[str], k: int) -> int:
    """``search --method NAME``: the ood set ranked by a pooled conv5 descriptor."""
    from neuralcodes.errors import NeuralCodesError
    from neuralcodes.retrieval.methods import get
    from neuralcodes.retrieval.methods.pooled import search_with_method

    if args.method is None:
        raise NeuralCodesError("--why needs --method (a pooled descriptor to explain)")
    if len(images) != 1:
        raise NeuralCodesError(f"--method ranks by one query image; {len(images)} were given")
    get(args.method, "pooling")  # an unknown name: one line naming the known ones
    for flag, value in (("--index", args.index), ("--layer", args.layer),
                        ("--figure", args.figure), ("--json", args.json)):
        if value:
            raise NeuralCodesError(f"{flag} does not go with --method (it ranks the ood set by "
                                   "a pooled conv5 descriptor)")
    from neuralcodes.runs import TrainedRun

    with console_logging():
        hits = search_with_method(images[0], TrainedRun.open(args.run, cfg, reader=True),
                                  args.method, k=k, why=args.why)
    print(f"method {args.method} (pooled conv5 descriptor), the ood set:", flush=True)
    _print_hits(hits)
    if args.why:
        print(f"why similar: {printable(args.why)}")
    return 0
