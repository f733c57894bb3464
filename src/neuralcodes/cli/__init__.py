"""The ``neuralcodes`` command: one subcommand per stage of the study.

Each stage's module registers its own subcommand (``register(subparsers)``), so a command's flags
live next to the code they drive. This module only names the commands, builds the parser and turns
failures into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from neuralcodes import __version__
from neuralcodes.errors import NeuralCodesError

#: Every subcommand: the module that defines it (with ``register(subparsers)``) and its summary.
#: Only the chosen command's module is imported, so ``--help`` and light commands start fast
#: (most modules import torch).
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("neuralcodes.cli.prepare",
                "download Tiny ImageNet (or read --data) and build the image cache"),
    "train": ("neuralcodes.cli.train", "train the ConvNet (assignment Task 2)"),
    "evaluate": ("neuralcodes.cli.evaluate", "cross-entropy, top-1 and top-5 on train/val/test"),
    "codes": ("neuralcodes.codes", "compute the unit-length neural codes of a trained run"),
    "retrieval": ("neuralcodes.retrieval",
                  "ood retrieval study: figures, mAP, PCA study, layer evidence"),
    "index": ("neuralcodes.retrieval", "index a folder of your own images for `search`"),
    "search": ("neuralcodes.retrieval", "find the images most similar to IMAGE"),
    "run": ("neuralcodes.cli.run",
            "run the whole study: prepare, train, evaluate, retrieve, report"),
    "serve": ("neuralcodes.web", "a local web app: browse the ood images and search"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; the full subparser only for the command named in ``argv``.

    With ``argv=None`` every command's module is imported and its full subparser built.
    """
    parser = argparse.ArgumentParser(
        prog="neuralcodes",
        description="Neural Codes for Image Retrieval (Babenko et al., ECCV 2014) on Tiny "
        "ImageNet: prepare the data, train and evaluate the ConvNet, retrieve with neural "
        "codes, and write a report.",
    )
    parser.add_argument("--version", action="version", version=f"neuralcodes {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if argv is None:
        wanted = {module for module, _ in COMMANDS.values()}
    else:
        chosen = next((a for a in argv if not a.startswith("-")), None)
        wanted = {COMMANDS[chosen][0]} if chosen in COMMANDS else set()
    for module in dict.fromkeys(m for m, _ in COMMANDS.values()):
        if module in wanted:
            importlib.import_module(module).register(sub)
    for name, (module, summary) in COMMANDS.items():
        if module not in wanted:
            sub.add_parser(name, help=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NeuralCodesError as e:
        print(f"neuralcodes: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neuralcodes: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print("neuralcodes: error: no space left on device"
                  + (f" while writing {e.filename}" if e.filename else ""), file=sys.stderr)
            return 2
        if e.errno in (errno.ENOENT, errno.EACCES, errno.EISDIR, errno.ENOTDIR, errno.EROFS):
            print(f"neuralcodes: error: {e.strerror}: {e.filename}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
