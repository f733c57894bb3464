"""The ``neuralcodes`` command: one subcommand per stage of the study.

Each stage's module registers its own subcommand (``register(subparsers)``), so a command's flags
live next to the code they drive. This module only builds the parser and turns failures into a
one-line message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from neuralcodes import __version__
from neuralcodes.errors import NeuralCodesError

#: Modules that define subcommands, in the order the study runs them.
COMMAND_MODULES: tuple[str, ...] = (
    "neuralcodes.data",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="neuralcodes",
        description="Neural Codes for Image Retrieval (Babenko et al., ECCV 2014) on Tiny "
        "ImageNet: prepare the data, train and evaluate the ConvNet, retrieve with neural "
        "codes, and write a report.",
    )
    parser.add_argument("--version", action="version", version=f"neuralcodes {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
