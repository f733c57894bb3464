"""The user's own images: decode any common format and size into the 64x64 RGB of the training
images (Pillow, EXIF orientation applied, whole image resized bicubic with antialiasing).

Placeholder home of :func:`read_image`: ``neuralcodes.imageio`` (bounded, safe decoding) is to
replace it; the names here are what the index, search and web app use until then.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from neuralcodes.errors import NeuralCodesError

IMAGE_SIZE = 64
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})



def read_image(path: str | Path | BinaryIO) -> np.ndarray:
    """An image (path or binary file) of any size and common format as uint8 (64, 64, 3) RGB."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (IMAGE_SIZE * 2, IMAGE_SIZE * 2))  # fast JPEG downscale, if any
            rgb = ImageOps.exif_transpose(im).convert("RGB")  # phone photos: upright first
            if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
                rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
            return np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError:
        raise NeuralCodesError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise NeuralCodesError(f"{path}: cannot read image ({e})") from None


def image_files(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, by suffix), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NeuralCodesError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file())


def read_images(paths: Iterable[str | Path], progress: bool = False
                ) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]]]:
    """Decode many files: (images (N, 64, 64, 3), the paths read, [(path, why)] of failures)."""
    images, ok, failed = [], [], []
    for p in tqdm(list(paths), unit="img", desc="reading", disable=not progress, leave=False):
        try:
            images.append(read_image(p))
            ok.append(Path(p))
        except NeuralCodesError as e:
            failed.append((Path(p), str(e)))
    arr = np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return arr, ok, failed
