"""The ``neuralcodes`` command: one subcommand per stage of the study.

Each stage's module fills in its own subcommand's parser (``register(parser)``: description and
flags), so a command's flags live next to the code they drive. This module names the commands
with their one-line summaries (:data:`COMMANDS`, the only place a summary is written), builds the
parser and turns failures into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import zipfile
from collections.abc import Sequence
from types import TracebackType

from neuralcodes import __version__
from neuralcodes.errors import NeuralCodesError
from neuralcodes.text import printable

#: Every subcommand: the module that fills in its parser (``register(parser)``) and its summary,
#: shown in ``neuralcodes --help`` and as the command's help alike.
#: Only the chosen command's module is imported, so ``--help`` and light commands start fast
#: (most modules import torch).
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("neuralcodes.cli.prepare",
                "download Tiny ImageNet (or read --data) and build the image cache"),
    "train": ("neuralcodes.cli.train", "train the ConvNet (assignment Task 2)"),
    "evaluate": ("neuralcodes.cli.evaluate", "cross-entropy, top-1 and top-5 on train/val/test"),
    "codes": ("neuralcodes.cli.codes", "compute the unit-length neural codes of a trained run"),
    "retrieval": ("neuralcodes.cli.retrieval",
                  "ood retrieval study: figures, mAP, PCA and methods studies, layer "
                  "evidence; --index NAME: mAP of a labelled collection"),
    "index": ("neuralcodes.cli.index", "index a folder of your own images for `search`"),
    "search": ("neuralcodes.cli.search", "find the images most similar to IMAGE"),
    "duplicates": ("neuralcodes.cli.duplicates", "list near-duplicate images in an index"),
    "run": ("neuralcodes.cli.run",
            "run the whole study: prepare, train, evaluate, retrieve, report"),
    "serve": ("neuralcodes.cli.serve",
              "a local web app: browse the ood images and search with your own"),
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), like every other error;
    subparsers inherit the class."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"neuralcodes: error: {message} (see `{self.prog} --help`)\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; the full subparser only for the command named in ``argv``.

    With ``argv=None`` every command's module is imported and its full subparser built.
    """
    parser = _Parser(
        prog="neuralcodes",
        description="Neural Codes for Image Retrieval (Babenko et al., ECCV 2014) on Tiny "
        "ImageNet: prepare the data, train and evaluate the ConvNet, retrieve with neural "
        "codes, and write a report.",
    )
    parser.add_argument("--version", action="version", version=f"neuralcodes {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), None)
    for name, (module, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary)  # the one place a summary is given
        if argv is None or name == chosen:
            importlib.import_module(module).register(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed in one line
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except NeuralCodesError as e:  # one line, even if a message quotes a multi-line reason
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        print(f"neuralcodes: error: {printable(first)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neuralcodes: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print("neuralcodes: error: no space left on device"
                  + (f" while writing {printable(str(e.filename))}" if e.filename else ""),
                  file=sys.stderr)
        else:
            where = f": {printable(str(e.filename))}" if e.filename else ""
            print(f"neuralcodes: error: {printable(str(e.strerror or e))}{where}",
                  file=sys.stderr)
        return 2
    except zipfile.BadZipFile as e:  # a cut-short .npz: name the file numpy was reading
        name = _zip_name(e.__traceback__)
        if name is None:
            return _internal_error(e)
        print(f"neuralcodes: error: {printable(name)}: damaged or incomplete file ({e}); "
              "delete it and make it again", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: still one line, the traceback only on request
        return _internal_error(e)


def _internal_error(e: Exception) -> int:
    """A bug: one line and exit 1, or the traceback with ``NEURALCODES_DEBUG=1``."""
    if os.environ.get("NEURALCODES_DEBUG"):
        raise e
    first = str(e).splitlines()[0] if str(e) else ""
    print(f"neuralcodes: error: internal error ({type(e).__name__}: {printable(first)}); "
          "NEURALCODES_DEBUG=1 shows the traceback", file=sys.stderr)
    return 1


def _zip_name(tb: TracebackType | None) -> str | None:
    """The file name of the :class:`zipfile.ZipFile` that raised (numpy opens ``.npz`` files
    through one), found in the failing frames; None if it cannot be told."""
    name = None
    while tb is not None:
        zf = tb.tb_frame.f_locals.get("self")
        if isinstance(zf, zipfile.ZipFile) and zf.filename:
            name = str(zf.filename)
        tb = tb.tb_next
    return name


if __name__ == "__main__":
    sys.exit(main())
