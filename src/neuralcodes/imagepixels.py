"""From decoded pixels to what the model sees, and what people are told about it: the EXIF
orientation, RGB (transparency on white, 16-bit samples to 8 bits), and the notes on what was
done to a query image. Used by :mod:`neuralcodes.imageio` (every public name here is importable
from there too) and :mod:`neuralcodes.pngstrips`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: The model's input side (the cached training images' size).
IMAGE_SIZE = 64
ORIENTATION_TAG = 0x0112
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
             4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
             6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


def displayed(width: int, height: int, turn: int) -> tuple[int, int]:
    """A stored ``width`` x ``height`` as displayed under EXIF orientation ``turn``."""
    return (height, width) if turn in (5, 6, 7, 8) else (width, height)


def has_alpha(im: Image.Image) -> bool:
    """Whether ``im`` has an alpha channel or a transparent colour."""
    return im.mode in ALPHA_MODES or "transparency" in im.info


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as RGB: transparency composited on white, 16-bit samples scaled to 8 bits."""
    if im.mode == "RGB":
        return im
    if im.mode in SIXTEEN_BIT:
        a = np.asarray(im)
        if im.mode == "I" and a.max(initial=0) <= 255:
            eight = a.astype(np.uint8)
        else:
            eight = (np.clip(a, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(eight, "L").convert("RGB")
    if has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def orientation(exif: bytes | None) -> int:
    """The EXIF orientation (1-8) in raw EXIF bytes; 1 when absent or unreadable."""
    if not exif:
        return 1
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        value = parsed.get(ORIENTATION_TAG, 1)
        return value if value in TRANSPOSE else 1
    except Exception:  # noqa: BLE001  (broken EXIF: show the image as stored)
        return 1


def header_orientation(im: Image.Image) -> int:
    """The EXIF orientation known from an opened (not loaded) image; 1 if none."""
    try:
        turn = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001  (broken EXIF: shown as stored)
        return 1
    return turn if turn in TRANSPOSE else 1


def query_notes(width: int, height: int, *, transparent: bool = False) -> list[str]:
    """What was done to a ``width`` x ``height`` query image before the model saw it, as
    sentences for people (the web API's ``query.notes``, ``neuralcodes search``'s notes): squeezed
    when not square, which side(s) were enlarged when shorter than 64, transparency on white."""
    side = IMAGE_SIZE
    notes = []
    if width != height:
        notes.append(f"Your image is {width}×{height}: it was squeezed to {side}×{side} (the "
                     "aspect ratio is not kept), as are the images of an index.")
    if width < side and height < side:
        notes.append(f"Your image is only {width}×{height} pixels: it was enlarged to "
                     f"{side}×{side}, so the model sees a blurry version.")
    elif width < side:
        notes.append(f"Its width ({width} px) was enlarged to {side}, so the model sees it "
                     "blurred horizontally.")
    elif height < side:
        notes.append(f"Its height ({height} px) was enlarged to {side}, so the model sees it "
                     "blurred vertically.")
    if transparent:
        notes.append("Transparent areas were filled with white.")
    return notes
