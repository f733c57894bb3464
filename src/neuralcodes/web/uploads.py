"""Decoding of uploaded images: bytes -> the 64x64 model input, with clear 4xx refusals.

The decoding itself is :mod:`neuralcodes.imageio` (bounded memory, the one place where user
images are decoded); this module maps its refusals to HTTP statuses and keeps recent uploads.
"""

from __future__ import annotations

import io
import secrets
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image

from neuralcodes import imageio

#: The model's input size (the cached images' side).
#: Upload limits (``create_app`` arguments, ``serve --max-upload-mb/--max-megapixels``).
DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
DEFAULT_MAX_PIXELS = 50_000_000
#: Accepted upload formats: Pillow format name -> media type.
UPLOAD_FORMATS: dict[str, str] = {f: f"image/{f.lower()}" for f in imageio.UPLOAD_FORMATS}


class UploadRejected(Exception):
    """An upload the app refuses; ``status`` is the HTTP status, the message its detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def decode_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Upload bytes -> (uint8 (64, 64, 3) model input, ``{"format", "width", "height",
    "upscaled", "transparent", "notes"}``), decoded with bounded memory by
    :mod:`neuralcodes.imageio`.

    Only JPEG, PNG and WebP are accepted (415 otherwise); the pixel count and the memory the
    decode needs are checked from the header first (413); corrupt or truncated files give 400.
    Transparent areas are composited on white; an image smaller than 64x64 is enlarged. A
    non-square image is squeezed to 64x64 (the aspect ratio is not kept), exactly as
    the images of ``neuralcodes index`` and the query of ``neuralcodes search`` are. ``notes``
    says all of this to people (:func:`neuralcodes.imageio.query_notes`).
    """
    try:
        image, info = imageio.decode_image(data, max_pixels=max_pixels)
    except imageio.ImageRejected as e:
        raise UploadRejected(e.status, e.reason) from None
    meta = info.as_dict()
    meta["notes"] = imageio.query_notes(info.width, info.height, transparent=info.transparent)
    return image, meta


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
