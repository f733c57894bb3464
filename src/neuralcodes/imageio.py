"""Bounded, safe decoding of user images: the one place where uploads (``serve``) and the files
of ``neuralcodes index`` / ``neuralcodes search`` are decoded.

:func:`decode_image` reads the header first and refuses (:class:`ImageRejected`, one line) an
image whose pixel count or decoding memory is above the limits, *before* decoding anything. It
then decodes with as little memory as the format allows:

- JPEG: libjpeg's DCT scaling (``draft``) decodes at 1/2 to 1/8 of the size; progressive JPEGs
  still buffer their coefficients (about 2 bytes per sample), which the estimate counts.
- PNG: small ones are decoded whole; above the budget, non-interlaced PNGs are decoded in strips
  that are box-reduced on the fly (:mod:`neuralcodes.pngstrips`), so memory stays at a few MB
  for any size. 16-bit RGB(A) and interlaced PNGs above the budget are refused.
- WebP: Pillow cannot decode a WebP reduced; it needs ~16-18 bytes per pixel while decoding
  (measured), so the budget caps WebP at ~5 megapixels by default.

Every image ends as RGB: EXIF orientation applied, transparency composited on white, 16-bit
samples scaled to 8 bits (high byte, as Pillow does for 16-bit RGB), then resized to
``size`` x ``size`` with the bicubic filter (the aspect ratio is not kept: a non-square image is
squeezed). For ordinary images this is Pillow's plain path (draft, ``exif_transpose``,
``convert("RGB")``, bicubic resize).
After a large decode the freed memory is handed back to the OS (glibc ``malloc_trim``).

The memory estimates live in :mod:`neuralcodes.imagecost`, the pixel conversions (orientation,
RGB) and the notes on a query in :mod:`neuralcodes.imagepixels`; every public name of both is
importable from here too.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from neuralcodes import jpegscans, pngstrips
from neuralcodes.errors import NeuralCodesError
from neuralcodes.imagecost import REDUCING_GAP as REDUCING_GAP
from neuralcodes.imagecost import (
    STRIP_BYTES_PER_PIXEL,
    STRIP_TARGET_BYTES,
    direct_cost,
    reduce_factor,
    release_memory,
)
from neuralcodes.imagecost import WEBP_BYTES_PER_PIXEL as WEBP_BYTES_PER_PIXEL
from neuralcodes.imagecost import pixel_bytes as pixel_bytes
from neuralcodes.imagepixels import ALPHA_MODES as ALPHA_MODES
from neuralcodes.imagepixels import (
    IMAGE_SIZE,
    ORIENTATION_TAG,
    TRANSPOSE,
    displayed,
    has_alpha,
    header_orientation,
    orientation,
    to_rgb,
)
from neuralcodes.imagepixels import SIXTEEN_BIT as SIXTEEN_BIT
from neuralcodes.imagepixels import query_notes as query_notes

log = logging.getLogger(__name__)

#: The formats a web upload may have (Pillow names).
UPLOAD_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
#: The pixel limit of an upload by default (``serve.max_megapixels`` reads it from here).
DEFAULT_MAX_PIXELS = 50_000_000
#: Most scans a JPEG upload may have (real files: 1 to about 15; see :mod:`neuralcodes.jpegscans`).
DEFAULT_MAX_SCANS = 300
#: Most memory one decode may need (uploads): 7000x7000 PNGs fit (in strips), 5 MP WebPs do.
DEFAULT_MAX_DECODE_BYTES = 100 * 2**20
#: The pixel limit for the user's own files: none but Pillow's decompression-bomb guard.
LOCAL_MAX_PIXELS = 2**40
#: The budget for the user's own files (``neuralcodes index`` / ``search``: one at a time).
LOCAL_MAX_DECODE_BYTES = 2**30
#: Decodes estimated above this give their memory back to the OS afterwards.
TRIM_ABOVE_BYTES = 32 * 2**20

Source = bytes | bytearray | str | Path | BinaryIO


class ImageRejected(NeuralCodesError):
    """An image that is refused or cannot be decoded. ``reason`` is one line without the
    source's name; ``status`` the matching HTTP status (400 corrupt, 413 too large, 415 not an
    accepted format); ``str()`` is the reason, after ``"<path>: "`` (and ``"cannot read image"``
    for unreadable ones) for named files."""

    def __init__(self, reason: str, status: int = 400, source: str | None = None) -> None:
        message = reason
        if source:
            message = f"{source}: {reason if status == 413 else f'cannot read image ({reason})'}"
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.source = source

    def __reduce__(self) -> tuple[type, tuple[str, int, str | None]]:  # pickled whole (workers)
        return (type(self), (self.reason, self.status, self.source))


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`decode_image` saw and did."""

    format: str
    width: int  #: width as stored in the file (before the EXIF orientation)
    height: int  #: height as stored
    mode: str  #: Pillow mode of the file, e.g. "RGB", "P", "RGBA", "I;16"
    upscaled: bool  #: a side was shorter than ``size``: the model sees an enlarged image
    method: str  #: "direct", "draft" (JPEG DCT scaling) or "strips" (PNG, box-reduced)
    decode_bytes: int  #: the estimated peak memory of the decode
    rows_per_strip: int = 0  #: "strips": rows decoded at a time
    transparent: bool = False  #: the file has an alpha channel or a transparent colour (on white)
    orientation: int = 1  #: the EXIF orientation applied (1: none; 5-8 swap width and height)

    @property
    def displayed_size(self) -> tuple[int, int]:
        """(width, height) as every viewer shows the image: after the EXIF orientation."""
        return displayed(self.width, self.height, self.orientation)

    def as_dict(self) -> dict[str, object]:
        """The fields the web API reports for an upload (its size as displayed)."""
        width, height = self.displayed_size
        return {"format": self.format, "width": width, "height": height,
                "upscaled": self.upscaled, "transparent": self.transparent}


def _name(source: Source) -> str | None:
    if isinstance(source, str | Path):
        return str(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else None


def _file(source: Source) -> tuple[BinaryIO, bool]:
    """A binary file for ``source`` and whether we opened it (and must close it)."""
    if isinstance(source, bytes | bytearray | memoryview):
        if not len(source):
            raise ImageRejected("the file is empty", 400, None)
        return io.BytesIO(bytes(source)), True
    if isinstance(source, str | Path):
        try:
            return open(source, "rb"), True  # noqa: SIM115  (closed by the caller)
        except FileNotFoundError:
            raise ImageRejected("no such file", 400, str(source)) from None
        except OSError as e:
            raise ImageRejected(str(e.strerror or e), 400, str(source)) from None
    return source, False


def _open(fp: BinaryIO, formats: tuple[str, ...] | None, name: str | None) -> Image.Image:
    """Open (header only) with clear refusals."""
    try:
        im = Image.open(fp, formats=list(formats) if formats else None)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(_bomb_reason(), 413, name) from None
    except UnidentifiedImageError:
        if _is_empty(fp):
            raise ImageRejected("the file is empty", 400, name) from None
        what = (f"not a {', '.join(f.replace('WEBP', 'WebP') for f in formats[:-1])} or "
                f"{formats[-1].replace('WEBP', 'WebP')} image") if formats else \
            "not an image file that Pillow can read"
        raise ImageRejected(what, 415 if formats else 400, name) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageRejected(f"corrupt header ({_short(e)})", 400, name) from None
    px = im.size[0] * im.size[1]
    if Image.MAX_IMAGE_PIXELS and px > Image.MAX_IMAGE_PIXELS:
        raise ImageRejected(_bomb_reason(), 413, name)
    return im


def _is_empty(fp: BinaryIO) -> bool:
    try:
        fp.seek(0)
        return not fp.read(1)
    except (OSError, ValueError):
        return False


def _bomb_reason() -> str:
    return ("image refused as a possible decompression bomb (more than "
            f"{Image.MAX_IMAGE_PIXELS:,} pixels)")


def _short(e: BaseException) -> str:
    """An exception as a short line with no object reprs in it."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if " object at 0x" not in text else type(e).__name__


def probe(source: Source, formats: tuple[str, ...] | None = UPLOAD_FORMATS
          ) -> tuple[str, int, int]:
    """``(format, width, height)`` from the header alone (nothing is decoded); the size as
    displayed, i.e. after the EXIF orientation found in the header."""
    fp, own = _file(source)
    try:
        with _open(fp, formats, _name(source)) as im:
            return (str(im.format),
                    *displayed(im.size[0], im.size[1], header_orientation(im)))
    finally:
        if own:
            fp.close()


def decode_image(source: Source, *, size: int = IMAGE_SIZE,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
                 formats: tuple[str, ...] | None = UPLOAD_FORMATS,
                 max_scans: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """A user image (bytes, a path or a binary file) as a uint8 ``(size, size, 3)`` RGB array,
    with what was seen and done (:class:`ImageInfo`). ``formats``: the accepted Pillow formats
    (None: any Pillow reads). ``max_scans``: the most scans a JPEG may have (None: any; see
    :mod:`neuralcodes.jpegscans`), counted before anything is decoded. Raises
    :class:`ImageRejected` with a one-line reason."""
    name = _name(source)
    fp, own = _file(source)
    try:
        with _open(fp, formats, name) as im:
            info = _plan(im, size, max_pixels, max_decode_bytes, name)
            if max_scans is not None and info.format == "JPEG":
                check_scans(fp, max_scans, name)
            try:
                rgb, turn = _decode(im, fp, info, size)
                info = replace(info, orientation=turn)
            except (OSError, SyntaxError, ValueError, EOFError, pngstrips.PngError) as e:
                raise ImageRejected(f"corrupt or truncated {info.format} file ({_short(e)})",
                                    400, name) from None
    finally:
        if own:
            fp.close()
    if info.decode_bytes > TRIM_ABOVE_BYTES:
        release_memory()
    return rgb, info


def decode_in_worker(source: Source, *, pillow_max_pixels: int | None,
                     **kwargs: object) -> tuple[np.ndarray, ImageInfo]:
    """:func:`decode_image` in a decoder process (:mod:`neuralcodes.decodepool`), under the
    calling process's Pillow decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``)."""
    Image.MAX_IMAGE_PIXELS = pillow_max_pixels
    return decode_image(source, **kwargs)  # type: ignore[arg-type]


def check_scans(fp: BinaryIO, limit: int, name: str | None = None) -> None:
    """Refuse (413) a JPEG with more than ``limit`` scans, before decoding it."""
    fp.seek(0)
    data = fp.getbuffer() if isinstance(fp, io.BytesIO) else fp.read()
    try:
        n = jpegscans.count_scans(data, limit)
    finally:
        if isinstance(data, memoryview):
            data.release()
        fp.seek(0)
    if n > limit:
        raise too_many_scans(limit, name)


def too_many_scans(limit: int, name: str | None = None) -> ImageRejected:
    """The refusal of a JPEG with more than ``limit`` scans."""
    return ImageRejected(f"JPEG refused: it has more than {limit:,} scans (ordinary JPEGs have "
                         "at most about 15, and each scan is decoded in full); save it again "
                         "as a baseline JPEG or a PNG", 413, name)


def _plan(im: Image.Image, size: int, max_pixels: int, max_decode_bytes: int,
          name: str | None) -> ImageInfo:
    """Check the limits from the header; choose how to decode."""
    fmt, mode = str(im.format), im.mode
    width, height = im.size
    if width * height > max_pixels:
        raise ImageRejected(f"image too large: {width}x{height} pixels (limit "
                            f"{max_pixels:,} pixels)", 413, name)
    method = "direct"
    if fmt == "JPEG":
        im.draft("RGB", (2 * size, 2 * size))  # DCT scaling: decodes at 1/2 .. 1/8 size
        method = "draft" if im.size != (width, height) else "direct"
    cost = direct_cost(im, (width, height))
    rows = 0
    if cost > max_decode_bytes and pngstrips.supports(im):
        method, factor = "strips", reduce_factor(width, height, size)
        reduced = 8 * (-(-width // factor)) * (-(-height // factor))  # strips + the result
        per_row = width * STRIP_BYTES_PER_PIXEL
        target = min(STRIP_TARGET_BYTES, max_decode_bytes - reduced)
        rows = factor * max(1, target // (per_row * factor))
        cost = rows * per_row + reduced
    if cost > max_decode_bytes:
        raise ImageRejected(f"image too large to decode: {width}x{height} {mode} {fmt} needs "
                            f"about {cost / 2**20:.0f} MB (limit {max_decode_bytes / 2**20:.0f} "
                            "MB); send a smaller image", 413, name)
    return ImageInfo(format=fmt, width=width, height=height, mode=mode,
                     upscaled=width < size or height < size, method=method, decode_bytes=cost,
                     rows_per_strip=rows, transparent=has_alpha(im))


def _decode(im: Image.Image, fp: BinaryIO, info: ImageInfo, size: int
            ) -> tuple[np.ndarray, int]:
    """Decode, orient, convert and resize (see the module doc); (pixels, EXIF orientation)."""
    if info.method == "strips":
        w, h = im.size
        rgb, exif = pngstrips.decode_strips(im, fp, to_rgb, reduce_factor(w, h, size),
                                            info.rows_per_strip)
        turn = orientation(exif)
        if turn != 1:
            rgb = rgb.transpose(TRANSPOSE[turn])
    else:
        im.load()
        turn = im.getexif().get(ORIENTATION_TAG, 1)  # as ImageOps.exif_transpose (XMP too)
        turn = turn if turn in TRANSPOSE else 1
        current = im.transpose(TRANSPOSE[turn]) if turn != 1 else im
        rgb = to_rgb(current)
        if current is not im and rgb is not current:
            current.close()
        if rgb is not im:
            im.close()  # frees the decoded pixels now, not when the caller is done
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8), turn


