"""``neuralcodes search``: the images most similar to IMAGE (ood set or a folder index)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from neuralcodes import features
from neuralcodes.cli.common import add_config_options, console_logging, run_config
from neuralcodes.text import printable

#: The pooling methods of neuralcodes.retrieval.methods.REGISTRY (the CLI does not import the
#: library to build its parser; tests/test_methods.py checks they agree).
POOLING_METHODS = ("mac", "spoc", "spoc-centre", "gem", "gem-fit", "rmac")


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
    p.add_argument("--figure", help="also save the query and its results as a PNG")
    add_config_options(p, "--device", "--precision")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from neuralcodes import imageio, lineage
    from neuralcodes.errors import NeuralCodesError
    from neuralcodes.retrieval import search
    from neuralcodes.runs import RunDir, TrainedRun

    saved = RunDir.existing(args.run).read_config()
    cfg = run_config(args, saved)
    k = cfg.retrieval.k if args.k is None else args.k
    if k < 1:
        raise NeuralCodesError(f"-k must be positive, got {k}")
    if Path(args.image).is_dir():
        raise NeuralCodesError(f"{args.image} is a folder; search takes one image (to search "
                               "among a folder's images, index it with `neuralcodes index`)")
    if args.method is not None or args.why:
        return _method_search(args, cfg, k)
    layers = cfg.retrieval.layers
    layer = args.layer or ("6" if "6" in layers else layers[0])
    # an index holds one variant: its own unless retrieval.relu is set on this command
    relu = (None if args.index and cfg.retrieval.relu == saved.retrieval.relu
            else cfg.retrieval.relu)
    # everything that can fail runs before the first line is printed
    with console_logging():  # a line on stderr if the ood codes must be recomputed
        run = TrainedRun.open(args.run, cfg, reader=True)
        hits = search(args.image, run, index=args.index, layer=layer, k=k,
                      figure=args.figure, relu=relu)
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
    _print_hits(hits, "figure", args.figure)
    return 0


def _print_hits(hits: list[Any], what: str, written: str | None) -> None:
    """One line per hit (names escaped: a file name cannot drive the terminal), then the
    file written, if any."""
    for h in hits:
        print(f"{h.rank:>3}  {h.score:.4f}  {printable(h.path)}"
              + (f"  ({printable(h.label)})" if h.label else ""))
    if written:
        print(f"{what}: {printable(written)}")


def _method_search(args: argparse.Namespace, cfg: Any, k: int) -> int:
    """``search --method NAME``: the ood set ranked by a pooled conv5 descriptor."""
    from neuralcodes.errors import NeuralCodesError
    from neuralcodes.retrieval.methods import get
    from neuralcodes.retrieval.methods.pooled import search_with_method

    if args.method is None:
        raise NeuralCodesError("--why needs --method (a pooled descriptor to explain)")
    get(args.method, "pooling")  # an unknown name: one line naming the known ones
    for flag, value in (("--index", args.index), ("--layer", args.layer),
                        ("--figure", args.figure)):
        if value:
            raise NeuralCodesError(f"{flag} does not go with --method (it ranks the ood set by "
                                   "a pooled conv5 descriptor)")
    from neuralcodes.runs import TrainedRun

    with console_logging():
        hits = search_with_method(args.image, TrainedRun.open(args.run, cfg, reader=True),
                                  args.method, k=k, why=args.why)
    print(f"method {args.method} (pooled conv5 descriptor), the ood set:", flush=True)
    _print_hits(hits, "why similar", args.why)
    return 0
