"""Decode a large PNG in horizontal strips, so that the full-resolution image never exists.

Pillow decodes a PNG into one full-size buffer (a 7000x7000 RGB PNG: 196 MB). Here the IDAT
stream is inflated a few rows at a time (``zlib`` with a bounded output size, so a compression
bomb cannot blow up either), and each strip is handed back to Pillow as a small, self-contained
PNG to undo the row filters: its first row is the previous strip's last *unfiltered* row (filter
type None), which is exactly the context the PNG filters (Up, Average, Paeth) refer to. To get
those unfiltered bytes back losslessly, the small PNG declares an 8-bit colour type with the
same bytes per pixel as the original (1: grey, 2: grey+alpha, 3: RGB, 4: RGBA); Pillow's own
unpacker for the original raw mode then gives each strip exactly the pixels a full decode would.

Each strip goes through the caller's ``convert`` (mode -> RGB) and is box-reduced by ``factor``;
strips are multiples of ``factor`` rows, so the result equals
``convert(full_image).reduce(factor)`` bit for bit. Supported: non-interlaced PNGs of up to 4
bytes per pixel (every colour type at 8 bits or less, 16-bit grey and grey+alpha); 16-bit RGB(A)
and interlaced PNGs are not (``supports`` says so).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np
from PIL import Image

#: Pillow's raw mode of a PNG -> bits per pixel.
RAW_BITS: dict[str, int] = {"1": 1, "L;2": 2, "L;4": 4, "L": 8, "P;1": 1, "P;2": 2, "P;4": 4,
                            "P": 8, "I;16B": 16, "LA": 16, "RGB": 24, "LA;16B": 32, "RGBA": 32}
#: Bytes per pixel -> the 8-bit PNG colour type with that many bytes per pixel.
VIEW_COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}
SIGNATURE = b"\x89PNG\r\n\x1a\n"
READ_BLOCK = 1 << 20


class PngError(ValueError):
    """The PNG stream is corrupt or truncated."""


def raw_mode(im: Image.Image) -> str | None:
    """Pillow's raw mode of an opened (not loaded) PNG, or None."""
    if im.format != "PNG" or len(im.tile) != 1 or im.tile[0][0] != "zip":
        return None
    args = im.tile[0][3]
    return args if isinstance(args, str) else None


def supports(im: Image.Image) -> bool:
    """Whether ``im`` (an opened, not yet loaded PNG) can be decoded in strips."""
    return raw_mode(im) in RAW_BITS and not im.info.get("interlace")


def _chunks(fp: BinaryIO) -> Iterator[tuple[bytes, int]]:
    """(type, length) of each chunk from the file's start; the caller reads or skips the data
    (and the CRC) before asking for the next one."""
    fp.seek(0)
    if fp.read(8) != SIGNATURE:
        raise PngError("not a PNG file")
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise PngError("the file ends before its IEND chunk")
        length, ctype = struct.unpack(">I4s", head)
        yield ctype, length
        if ctype == b"IEND":
            return


class _Inflater:
    """The IDAT stream, inflated on demand, never more than asked for at a time."""

    def __init__(self, fp: BinaryIO) -> None:
        self.fp = fp
        self.chunks = _chunks(fp)
        self.z = zlib.decompressobj()
        self.left = 0  # bytes of the current IDAT chunk not read yet
        self.in_idat = False
        self.done_idat = False
        self.exif: bytes | None = None

    def _next_input(self) -> bytes:
        while True:
            if self.left:
                data = self.fp.read(min(self.left, READ_BLOCK))
                if not data:
                    raise PngError("the file is truncated")
                self.left -= len(data)
                if not self.left:
                    self.fp.read(4)  # CRC (the zlib checksum guards the data)
                return data
            if self.done_idat:
                return b""
            ctype, length = next(self.chunks)
            if ctype == b"IDAT":
                self.in_idat, self.left = True, length
                if not length:
                    self.fp.read(4)
                continue
            if self.in_idat or ctype == b"IEND":
                self.done_idat = True
                self._after(ctype, length)
                return b""
            self._skip(ctype, length)

    def _skip(self, ctype: bytes, length: int) -> None:
        if ctype == b"eXIf":
            self.exif = self.fp.read(length)
            self.fp.read(4)
        else:
            self.fp.seek(length + 4, io.SEEK_CUR)

    def _after(self, ctype: bytes, length: int) -> None:
        """Skip the chunks after the image data, keeping an ``eXIf`` found there."""
        while ctype != b"IEND":
            self._skip(ctype, length)
            ctype, length = next(self.chunks)

    def read(self, n: int) -> bytes:
        """Exactly ``n`` inflated bytes (PngError if the stream ends first)."""
        out = bytearray()
        try:
            while len(out) < n:
                if self.z.unconsumed_tail:
                    data = self.z.unconsumed_tail
                else:
                    data = self._next_input()
                    if not data:
                        raise PngError("the image data ends early")
                out += self.z.decompress(data, n - len(out))
        except zlib.error as e:
            raise PngError(f"corrupt image data ({e})") from None
        return bytes(out)

    def finish(self) -> None:
        """Read on to IEND (for an ``eXIf`` chunk after the image data)."""
        while not self.done_idat:
            if self.left:
                self.fp.seek(self.left + 4, io.SEEK_CUR)
                self.left = 0
            self._next_input()


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(
        ">I", zlib.crc32(data, zlib.crc32(ctype)) & 0xFFFFFFFF)


def _unfilter(filtered: bytes, context: bytes | None, rows: int, row_bytes: int,
              bpp: int) -> bytes:
    """Undo the PNG row filters of ``rows`` rows with Pillow (see the module doc)."""
    if context is not None:
        filtered = b"\x00" + context + filtered
        rows += 1
    ihdr = struct.pack(">IIBBBBB", row_bytes // bpp, rows, 8, VIEW_COLOUR_TYPE[bpp], 0, 0, 0)
    png = (SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(filtered, 0))
           + _chunk(b"IEND", b""))
    with Image.open(io.BytesIO(png), formats=["PNG"]) as view:
        raw = np.asarray(view).tobytes()
    return raw[row_bytes:] if context is not None else raw


def decode_strips(im: Image.Image, fp: BinaryIO, convert: Callable[[Image.Image], Image.Image],
                  factor: int, rows_per_strip: int) -> tuple[Image.Image, bytes | None]:
    """``(convert(image).reduce(factor), exif bytes of an eXIf chunk or None)`` for the PNG
    opened as ``im`` from ``fp`` (see the module doc). ``convert`` maps a strip to RGB;
    ``rows_per_strip``: a multiple of ``factor``."""
    rawmode = raw_mode(im)
    if rawmode not in RAW_BITS or im.info.get("interlace"):
        raise ValueError("this PNG cannot be decoded in strips")
    width, height = im.size
    bits = RAW_BITS[rawmode]
    bpp = (bits + 7) // 8
    row_bytes = (width * bits + 7) // 8
    if rows_per_strip % factor:
        raise ValueError("rows_per_strip must be a multiple of factor")
    palette = im.palette.copy() if im.mode == "P" and im.palette is not None else None
    inflater = _Inflater(fp)
    parts: list[Image.Image] = []
    context: bytes | None = None
    for top in range(0, height, rows_per_strip):
        rows = min(rows_per_strip, height - top)
        data = inflater.read(rows * (row_bytes + 1))
        if any(data[i * (row_bytes + 1)] > 4 for i in range(rows)):
            raise PngError("unknown PNG row filter")
        raw = _unfilter(data, context, rows, row_bytes, bpp)
        context = raw[-row_bytes:]
        strip = Image.frombytes(im.mode, (width, rows), raw, "raw", rawmode)
        if palette is not None:
            strip.palette = palette.copy()
        if "transparency" in im.info:
            strip.info["transparency"] = im.info["transparency"]
        parts.append(convert(strip).reduce(factor))
    inflater.finish()
    out = Image.new("RGB", (parts[0].width, sum(p.height for p in parts)))
    y = 0
    for part in parts:
        out.paste(part, (0, y))
        y += part.height
    return out, inflater.exif or im.info.get("exif")
