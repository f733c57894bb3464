"""The user's own images on disk: find them in a folder and decode them into the 64x64 RGB of
the training images (through :mod:`neuralcodes.imageio`)."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from neuralcodes import imageio
from neuralcodes.datasets.imagefolder import IMAGE_SUFFIXES, read_image
from neuralcodes.errors import NeuralCodesError
from neuralcodes.progress import bar as progress_bar

IMAGE_SIZE = imageio.IMAGE_SIZE
__all__ = ["IMAGE_SIZE", "IMAGE_SUFFIXES", "image_files", "read_image", "read_images"]


def image_files(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, by suffix), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NeuralCodesError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())


def read_images(paths: Iterable[str | Path], progress: bool = False
                ) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Decode many files: (images (N, 64, 64, 3), the paths read, [(path, why)] of failures).

    The progress bar starts once one file has decoded, so files that are all unreadable end
    without a progress line (the caller's one-line error stands alone).
    """
    paths = list(paths)
    images, ok, failed = [], [], []

    def read(p: str | Path) -> None:
        try:
            images.append(read_image(p))
            ok.append(Path(p))
        except NeuralCodesError as e:
            failed.append((Path(p), str(e)))

    first = 0
    while first < len(paths) and not ok:
        read(paths[first])
        first += 1
    for p in progress_bar(paths[first:], initial=first, total=len(paths), unit="img",
                          desc="reading", disable=not progress or first == len(paths),
                          leave=False):
        read(p)
    arr = np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return arr, ok, failed


def expand_images(patterns: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The image files named: each argument a file, or a glob (``**`` for subfolders) matched
    against files, sorted; a folder or a glob that matches nothing is refused in one line."""
    out = []
    for arg in map(os.fspath, patterns):
        if Path(arg).is_dir():
            raise NeuralCodesError(f"{arg} is a folder; search takes image files or a glob "
                                   "(to search among a folder's images, index it with "
                                   "`neuralcodes index`)")
        if Path(arg).exists() or not glob.has_magic(arg):
            out.append(arg)
            continue
        found = sorted(p for p in glob.glob(os.path.expanduser(arg), recursive=True)
                       if os.path.isfile(p))
        if not found:
            raise NeuralCodesError(f"{arg}: no file matches")
        out += found
    return out
