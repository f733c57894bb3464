"""Test helpers shared by every test file (``from helpers import make_tiny_imagenet``).

``make_tiny_imagenet`` writes a small generated dataset in the official Tiny ImageNet layout,
so tests never need the real images.
"""

from __future__ import annotations

import colorsys
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

#: Layout root inside the generated folder / zip, as in the official archive.
DATASET_DIR = "tiny-imagenet-200"


def fixture_wnids(n_classes: int) -> list[str]:
    """The wnids ``make_tiny_imagenet`` uses (already sorted): n00000100, n00000200, ..."""
    return [f"n{(i + 1) * 100:08d}" for i in range(n_classes)]


def class_image(label: int, n_classes: int, rng: np.random.Generator, *,
                learnable: bool = True, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """One uint8 HxWx3 image of class ``label``: a class colour times class-specific stripes,
    plus noise (``learnable``), or plain noise."""
    h, w = size
    if not learnable:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hue = (label * 0.618034) % 1.0  # golden-ratio hues: well spread for any class count
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9)) * 255
    angle = np.pi * ((label * 37) % 180) / 180
    freq = 2 + label % 4
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    img = colour[None, None, :] * (0.45 + 0.55 * stripes[..., None])
    img = img + rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def extras_paths(n_classes: int, per_class: int) -> dict[str, str]:
    """Where ``extras=True`` puts its files (relative to the dataset root):
    ``{"greyscale": ..., "corrupt": ..., "wrong_size": ...}``."""
    w = fixture_wnids(n_classes)
    return {kind: f"train/{w[k % n_classes]}/images/{w[k % n_classes]}_{per_class + k}.JPEG"
            for k, kind in enumerate(("greyscale", "corrupt", "wrong_size"))}


def make_tiny_imagenet(root: Path, n_classes: int = 6, per_class: int = 20, *,
                       learnable: bool = True, extras: bool = False,
                       zip_it: bool = False) -> Path:
    """Write a generated Tiny ImageNet in the official layout under ``root``.

    Layout: ``tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/<wnid>_boxes.txt,
    train/<wnid>/images/<wnid>_<i>.JPEG, val/val_annotations.txt, val/images/val_<k>.JPEG,
    test/images/test_<k>.JPEG}``; wnids are :func:`fixture_wnids` and class ``c`` is named
    ``"class <c>, synthetic"`` in words.txt. All train images are 64x64 RGB JPEGs; with
    ``learnable`` each class has its own colour and stripe pattern (a tiny ConvNet learns it fast).

    ``extras=True`` adds three more train files (``p = per_class``): ``<wnid0>_<p>.JPEG``
    greyscale (valid: cached as RGB), ``<wnid1>_<p+1>.JPEG`` a corrupt JPEG and
    ``<wnid2>_<p+2>.JPEG`` a 48x32 image (both rejected), where wnid0/1/2 are the 1st/2nd/3rd
    classes (wrapping around when there are fewer). See :func:`extras_paths`.

    Returns the ``tiny-imagenet-200`` folder, or with ``zip_it`` the zip
    ``root/tiny-imagenet-200.zip`` (holding that folder; nothing else is written).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    wnids = fixture_wnids(n_classes)
    files: dict[str, bytes] = {}
    files["wnids.txt"] = "".join(f"{w}\n" for w in wnids).encode()
    words = [f"{w}\tclass {c}, synthetic" for c, w in enumerate(wnids)]
    words.append("n99999999\tan unused class")
    files["words.txt"] = ("\n".join(words) + "\n").encode()
    for c, w in enumerate(wnids):
        boxes = []
        for i in range(per_class):
            name = f"{w}_{i}.JPEG"
            files[f"train/{w}/images/{name}"] = _jpeg(class_image(c, n_classes, rng,
                                                                  learnable=learnable))
            boxes.append(f"{name}\t0\t0\t63\t63")
        files[f"train/{w}/{w}_boxes.txt"] = ("\n".join(boxes) + "\n").encode()
    val_rows = []
    for k in range(min(n_classes, 4)):
        files[f"val/images/val_{k}.JPEG"] = _jpeg(class_image(k, n_classes, rng))
        val_rows.append(f"val_{k}.JPEG\t{wnids[k]}\t0\t0\t63\t63")
    files["val/val_annotations.txt"] = ("\n".join(val_rows) + "\n").encode()
    for k in range(2):
        files[f"test/images/test_{k}.JPEG"] = _jpeg(class_image(k % n_classes, n_classes, rng))
    if extras:
        grey_path, corrupt_path, small_path = extras_paths(n_classes, per_class).values()
        grey = Image.fromarray(class_image(0, n_classes, rng)).convert("L")
        buf = io.BytesIO()
        grey.save(buf, format="JPEG")
        files[grey_path] = buf.getvalue()
        files[corrupt_path] = _jpeg(class_image(1, n_classes, rng))[:300]  # cut short
        files[small_path] = _jpeg(class_image(2 % n_classes, n_classes, rng, size=(32, 48)))
    if zip_it:
        path = root / f"{DATASET_DIR}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for rel, data in files.items():
                z.writestr(f"{DATASET_DIR}/{rel}", data)
        return path
    base = root / DATASET_DIR
    for rel, data in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return base
