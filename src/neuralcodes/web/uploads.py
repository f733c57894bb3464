"""Decoding of uploaded images: bytes -> the 64x64 model input, with clear 4xx refusals.

The decoding itself is :mod:`neuralcodes.imageio` (bounded memory, the one place where user
images are decoded); this module maps its refusals to HTTP statuses and keeps recent uploads.
"""

from __future__ import annotations

import asyncio
import functools
import io
import secrets
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from PIL import Image

from neuralcodes import imageio, jpegscans
from neuralcodes.config import DEFAULT_MAX_UPLOAD_MB
from neuralcodes.decodepool import DecodeCancelled, DecodePool, DecodeTimeout, WorkerFailed

#: The model's input size (the cached images' side).
#: Upload limits (``create_app`` arguments, ``serve --max-upload-mb/--max-megapixels``).
DEFAULT_MAX_UPLOAD_BYTES = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
DEFAULT_MAX_PIXELS = imageio.DEFAULT_MAX_PIXELS
#: Accepted upload formats: Pillow format name -> media type.
UPLOAD_FORMATS: dict[str, str] = {f: f"image/{f.lower()}" for f in imageio.UPLOAD_FORMATS}


class UploadRejected(Exception):
    """An upload the app refuses; ``status`` is the HTTP status, the message its detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def decode_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_scans: int | None = imageio.DEFAULT_MAX_SCANS
                  ) -> tuple[np.ndarray, dict]:
    """Upload bytes -> (uint8 (64, 64, 3) model input, ``{"format", "width", "height",
    "upscaled", "transparent", "notes"}``), decoded with bounded memory by
    :mod:`neuralcodes.imageio`.

    Only JPEG, PNG and WebP are accepted (415 otherwise); the pixel count, the memory the
    decode needs and a JPEG's scans are checked before decoding (413); corrupt or truncated
    files give 400. Transparent areas are composited on white; an image smaller than 64x64 is
    enlarged. A non-square image is squeezed to 64x64 (the aspect ratio is not kept), exactly as
    the images of ``neuralcodes index`` and the query of ``neuralcodes search`` are. ``notes``
    says all of this to people (:func:`neuralcodes.imageio.query_notes`).
    """
    try:
        image, info = imageio.decode_image(data, max_pixels=max_pixels, max_scans=max_scans)
    except imageio.ImageRejected as e:
        raise UploadRejected(e.status, e.reason) from None
    return image, describe(info)


def describe(info: imageio.ImageInfo) -> dict[str, Any]:
    """What the API says about a decoded upload: format, size as displayed, notes."""
    meta = info.as_dict()
    meta["notes"] = imageio.query_notes(*info.displayed_size, transparent=info.transparent)
    return meta


class UploadDecoder:
    """Decodes uploads in killable worker processes (:class:`neuralcodes.decodepool.DecodePool`),
    at most ``limiter.slots`` at a time (:class:`neuralcodes.web.security.DecodeLimiter`), each
    stopped after ``timeout_s``, or as soon as its client hangs up; a JPEG with more than
    ``max_scans`` scans is refused before it takes a slot."""

    def __init__(self, limiter: Any, *, max_bytes: int, max_pixels: int, max_scans: int,
                 timeout_s: float) -> None:
        self.limiter = limiter
        self.max_bytes, self.max_pixels, self.max_scans = max_bytes, max_pixels, max_scans
        self.pool = DecodePool(limiter.slots, timeout_s)

    async def decode(self, file: Any, disconnected: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """An ``UploadFile`` -> (64x64 image, description); ``disconnected``: an async callable
        telling whether the client went away. Raises :class:`UploadRejected`."""
        from starlette.concurrency import run_in_threadpool

        from neuralcodes.web.security import Cancelled

        data = await file.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise UploadRejected(413, f"file too large (limit {format_bytes(self.max_bytes)})")
        if not data:
            raise UploadRejected(400, "the file is empty")
        if jpegscans.is_jpeg(data) and await run_in_threadpool(  # refused without a slot
                jpegscans.count_scans, data, self.max_scans) > self.max_scans:
            raise UploadRejected(413, imageio.too_many_scans(self.max_scans).reason)
        cancel = threading.Event()

        async def watch() -> None:
            while not await disconnected():
                await asyncio.sleep(0.1)
            cancel.set()

        watcher = asyncio.ensure_future(watch())
        try:
            async with self.limiter.aslot(cancel):
                run = functools.partial(self.pool.run, imageio.decode_in_worker, data,
                                        cancel=cancel, max_pixels=self.max_pixels,
                                        max_scans=self.max_scans,
                                        pillow_max_pixels=Image.MAX_IMAGE_PIXELS)
                image, info = await run_in_threadpool(run)
        except imageio.ImageRejected as e:
            raise UploadRejected(e.status, e.reason) from None
        except DecodeTimeout as e:
            raise UploadRejected(413, f"image refused: {e}; send a smaller or simpler "
                                 "image") from None
        except (DecodeCancelled, Cancelled):
            raise UploadRejected(499, "the client went away; the decode was stopped") from None
        except WorkerFailed as e:
            raise UploadRejected(400, f"this image could not be decoded ({e})") from None
        finally:
            watcher.cancel()
        return image, describe(info)

    def close(self) -> None:
        self.pool.close()


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
