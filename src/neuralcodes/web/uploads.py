"""Decoding of uploaded images: bytes -> the 64x64 model input, with clear 4xx refusals.

Kept in its own module so a shared, bounded decoder (``neuralcodes.imageio``) can replace
:func:`decode_upload` without touching the app.
"""

from __future__ import annotations

import io
import secrets
import threading
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: The model's input size (the cached images' side).
IMAGE_SIZE = 64
#: Upload limits (``create_app`` arguments, ``serve --max-upload-mb/--max-megapixels``).
DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
DEFAULT_MAX_PIXELS = 50_000_000
#: Accepted upload formats: Pillow format name -> media type.
UPLOAD_FORMATS: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


class UploadRejected(Exception):
    """An upload the app refuses; ``status`` is the HTTP status, the message its detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def decode_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Upload bytes -> (uint8 (64, 64, 3) model input, ``{"format", "width", "height",
    "upscaled", "transparent"}``).

    Only JPEG, PNG and WebP are accepted (415 otherwise). The pixel count is checked from the
    header before anything is decoded (413 above ``max_pixels``), and Pillow's own decompression
    bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) is treated as an error even in its warning range.
    Truncated or corrupt files give 400. Transparent areas are composited on white (as a viewer
    shows them), not on black; an image smaller than 64x64 is enlarged, and says so.
    """
    if not data:
        raise UploadRejected(400, "the uploaded file is empty")
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(UPLOAD_FORMATS)) as im:  # header only
                fmt, (width, height) = im.format, im.size
                if width * height > max_pixels:
                    raise UploadRejected(413, f"image too large: {width}x{height} pixels "
                                         f"(limit {max_pixels:,} pixels)")
                image, transparent = _to_model_input(im)
    except UploadRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadRejected(413, "image refused as a possible decompression bomb (more than "
                             f"{Image.MAX_IMAGE_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise UploadRejected(415, "not a JPEG, PNG or WebP image") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise UploadRejected(400, f"corrupt or truncated {fmt} file: it cannot be decoded"
                             ) from None
    return image, {"format": fmt, "width": width, "height": height,
                   "upscaled": width < IMAGE_SIZE or height < IMAGE_SIZE,
                   "transparent": transparent}


def _to_model_input(im: Image.Image) -> tuple[np.ndarray, bool]:
    """An opened image -> (uint8 (64, 64, 3) RGB, whether it had transparency): upright (EXIF),
    transparent areas on white, bicubic resize as :func:`neuralcodes.retrieval.read_image` does."""
    im.draft("RGB", (IMAGE_SIZE * 2, IMAGE_SIZE * 2))  # fast JPEG downscale, if any
    im = ImageOps.exif_transpose(im)
    transparent = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    if transparent:
        rgba = im.convert("RGBA")
        transparent = rgba.getchannel("A").getextrema()[0] < 255
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
    else:
        rgb = im.convert("RGB")
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8), transparent


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) image as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def format_bytes(n: int) -> str:
    """A size as people read it: ``20 MiB``, ``293 KiB``, ``512 bytes`` (the UI shows the same)."""
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) or value >= 10 \
                else f"{value:.1f} {unit}"
    return f"{n} bytes"


class UploadStore:
    """The last ``size`` uploads (their 64x64 model input and description), kept in memory under
    a random id, so that an upload's results have an address (``#/upload/<id>``): changing k or
    the database, reloading or going Back searches again without sending the file again."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[np.ndarray, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, image: np.ndarray, meta: dict[str, Any]) -> str:
        uid = secrets.token_hex(8)
        with self._lock:
            self._items[uid] = (image, meta)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return uid

    def get(self, uid: str) -> tuple[np.ndarray, dict[str, Any]]:
        with self._lock:
            if uid not in self._items:
                raise UploadRejected(404, f"upload {uid} is no longer on the server (it keeps "
                                     f"the last {self.size} uploads in memory): choose the "
                                     "image again")
            self._items.move_to_end(uid)
            return self._items[uid]
