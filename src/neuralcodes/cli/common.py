"""What every command shares: ``--config``/``--set`` and their short aliases, console logging.

Settings reach a command in one way: a base (the assignment's defaults, a preset, or a trained
run's saved config), then ``--config FILE``, then the short aliases (``--data``, ``--epochs``,
``--device``, ...), then each ``--set SECTION.KEY=VALUE`` in order; the result is validated in full
(:meth:`Config.from_dict`) before any work starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from neuralcodes import progress
from neuralcodes.config import PRECISIONS, Config, apply_overrides, describe_resumable
from neuralcodes.errors import NeuralCodesError
from neuralcodes.presets import PRESETS
from neuralcodes.runs import CHECKPOINTS
from neuralcodes.text import printable


def _epochs_help() -> str:
    """``--epochs``'s help: the default, and the presets that change it (``run --preset``)."""
    by_preset = ", ".join(f"{name} {p['train']['max_epochs']}" for name, p in PRESETS.items()
                          if "max_epochs" in p.get("train", {}))
    return (f"maximum number of epochs (default: {Config().train.max_epochs}, or the preset's "
            f"with run --preset: {by_preset})")


#: Short aliases: flag -> (section, key, help); values stay strings except ``--epochs``.
ALIASES: dict[str, tuple[str, str, str]] = {
    "--data": ("data", "source", "Tiny ImageNet zip or extracted folder, or a labelled image "
               "folder (one subfolder of images per class); default: download the official "
               "Tiny ImageNet archive"),
    "--cache-dir": ("data", "cache_dir", "where the decoded image cache lives (default: "
                    "$NEURALCODES_CACHE or ~/.cache/neuralcodes)"),
    "--url": ("data", "url", "download the official archive from this address, e.g. a mirror "
              "of the same file (md5-checked; default: $NEURALCODES_URL, else cs231n)"),
    "--epochs": ("train", "max_epochs", _epochs_help()),
    "--device": ("train", "device", "auto, cpu, cuda, cuda:N or mps (default: a trained run's "
                 "own setting, else auto)"),
    "--precision": ("train", "precision", f"{', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]} "
                    f"(default: a trained run's own setting, else {PRECISIONS[0]})"),
}


def add_config_options(p: argparse.ArgumentParser, *aliases: str) -> None:
    """``--config``, ``--set`` and the named short ``aliases`` (keys of :data:`ALIASES`)."""
    g = p.add_argument_group("settings (see `src/neuralcodes/config.py` for all of them)")
    g.add_argument("--config", metavar="FILE",
                   help="start from this JSON file: a run's config.json or a dict of sections")
    g.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append",
                   default=[], help="change one setting, e.g. --set train.lr=3e-4 (repeatable; "
                   "VALUE is JSON, else a string)")
    for flag in aliases:
        section, key, text = ALIASES[flag]
        g.add_argument(flag, dest=f"alias_{section}_{key}", metavar="N" if flag == "--epochs"
                       else "VALUE", type=int if flag == "--epochs" else str,
                       help=f"{text}; same as --set {section}.{key}=...")


def add_checkpoint_option(p: argparse.ArgumentParser) -> None:
    """``--checkpoint``: which of a run's weights to use."""
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best",
                   help="which weights: best (the kept weights, checkpoints/best.pt; default) or "
                   "last (the last epoch's, checkpoints/last.pt)")


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_batch_size_option(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--batch-size", type=positive_int, default=default, metavar="N",
                   help=f"images per forward pass (default: {default})")


def add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The sections of a ``--config`` file: a run's config.json or a bare dict of sections."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise NeuralCodesError(f"{path}: not valid JSON ({e})") from None
    d = d.get("config", d) if isinstance(d, dict) else d
    if not isinstance(d, dict):
        raise NeuralCodesError(f"{path}: expected a JSON object of config sections")
    return d


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> Config:
    """``base`` (default: the assignment's settings) with ``--config``, aliases and ``--set``
    applied in that order, validated in full."""
    d = base if base is not None else Config().to_dict()
    if getattr(args, "config", None):
        for section, values in read_config_file(args.config).items():
            if not isinstance(values, dict):
                raise NeuralCodesError(f"{args.config}: section '{section}' is not an object")
            d = {**d, section: {**d.get(section, {}), **values}}
    for section, key, _ in ALIASES.values():
        value = getattr(args, f"alias_{section}_{key}", None)
        if value is not None:  # aliases are typed by argparse: no JSON guessing for paths
            d = {**d, section: {**d.get(section, {}), key: value}}
    return Config.from_dict(apply_overrides(d, list(getattr(args, "overrides", []))))


def run_config(args: argparse.Namespace, saved: Config) -> Config:
    """A trained run's config with the command's settings applied; settings that define the
    trained model or its data are refused (they would not describe the weights any more)."""
    cfg = config_from_args(args, saved.to_dict())
    changed = [d for d in saved.differences(cfg)
               if not d.startswith("retrieval.")]
    if changed:
        allowed = describe_resumable()
        raise NeuralCodesError(f"cannot change {changed[0]} for a trained run; only retrieval.* "
                               f"and {allowed} may change")
    return cfg


def run_lock(run: str | Path, command: str) -> contextlib.AbstractContextManager[None]:
    """The run directory's write lock (see :meth:`RunDir.lock`); under torchrun only rank 0
    takes it, since the other ranks write nothing."""
    from neuralcodes.runs import RunDir

    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return RunDir(Path(run)).lock(command)


class _TqdmHandler(logging.Handler):
    """Log lines on stderr beside the progress bars, so stdout stays clean for results."""

    def emit(self, record: logging.LogRecord) -> None:  # names in messages escaped
        progress.write("\n".join(map(printable, self.format(record).split("\n"))), sys.stderr)


@contextlib.contextmanager
def console_logging(level: int = logging.INFO) -> Iterator[None]:
    """Show the library's log lines (logger ``neuralcodes``) on the console."""
    logger = logging.getLogger("neuralcodes")
    if any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        yield
        return
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, old_level or level))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
