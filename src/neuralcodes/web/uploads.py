"""Decoding of uploaded images: bytes -> the 64x64 model input, with clear 4xx refusals.

Kept in its own module so a shared, bounded decoder (``neuralcodes.imageio``) can replace
:func:`decode_upload` without touching the app.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from neuralcodes.errors import NeuralCodesError

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
    """Upload bytes -> (uint8 (64, 64, 3) model input, ``{"format", "width", "height"}``).

    Only JPEG, PNG and WebP are accepted (415 otherwise). The pixel count is checked from the
    header before anything is decoded (413 above ``max_pixels``), and Pillow's own decompression
    bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) is treated as an error even in its warning range.
    Truncated or corrupt files give 400.
    """
    from neuralcodes.codes import read_image

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
            # decode and resize exactly as `neuralcodes index` does for files
            image = read_image(io.BytesIO(data))
    except UploadRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadRejected(413, "image refused as a possible decompression bomb (more than "
                             f"{Image.MAX_IMAGE_PIXELS:,} pixels)") from None
    except UnidentifiedImageError:
        raise UploadRejected(415, "not a JPEG, PNG or WebP image") from None
    except (NeuralCodesError, OSError, SyntaxError, ValueError, EOFError):
        raise UploadRejected(400, f"corrupt or truncated {fmt} file: it cannot be decoded"
                             ) from None
    return image, {"format": fmt, "width": width, "height": height}


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
