"""How much memory a decode needs, estimated from the image header alone (before anything is
decoded), and handing it back to the OS afterwards. Used by :mod:`neuralcodes.imageio` to
choose how to decode and what to refuse (every public name here is importable from there too).
"""

from __future__ import annotations

import ctypes
import ctypes.util

from PIL import Image

from neuralcodes.imagepixels import has_alpha

#: Strip-decoded images are box-reduced to at least this many times ``size`` before the
#: final bicubic resize (Pillow's ``reducing_gap``).
REDUCING_GAP = 2
#: Estimated peak bytes per pixel of a PNG strip in flight (measured: ~25), and the most
#: memory the strips may use.
STRIP_BYTES_PER_PIXEL = 40
STRIP_TARGET_BYTES = 16 * 2**20
#: Bytes per pixel a WebP decode needs at its peak (measured with Pillow 13: 15-18).
WEBP_BYTES_PER_PIXEL = 20


def pixel_bytes(mode: str) -> int:
    """Bytes per pixel of a Pillow image of ``mode`` in memory."""
    return {"1": 1, "L": 1, "P": 1}.get(mode, 2 if mode.startswith("I;16") else 4)


def direct_cost(im: Image.Image, original: tuple[int, int]) -> int:
    """Peak bytes to decode ``im`` whole (at its current, possibly drafted, size), orient it
    and convert it to RGB; ``original``: its size in the file."""
    pixels = im.size[0] * im.size[1]
    ps = pixel_bytes(im.mode)
    convert = 0 if im.mode == "RGB" else ps + (12 if has_alpha(im) else 4)
    peak = max(2 * ps, convert) * pixels
    if im.format == "WEBP":
        peak = max(peak, WEBP_BYTES_PER_PIXEL * pixels)
    if im.format == "JPEG" and (im.info.get("progressive") or im.info.get("progression")):
        peak += _jpeg_coefficient_bytes(im, original)
    return peak


def _jpeg_coefficient_bytes(im: Image.Image, original: tuple[int, int]) -> int:
    """A progressive JPEG buffers all DCT coefficients (2 bytes a sample) whatever the draft."""
    w, h = original
    layers = getattr(im, "layer", None) or [("", 1, 1, 0)] * getattr(im, "layers", 3)
    hmax = max(layer[1] for layer in layers)
    vmax = max(layer[2] for layer in layers)
    samples = sum(layer[1] * layer[2] for layer in layers) / (hmax * vmax)
    return int(2 * (w + 15) * (h + 15) * samples)


def reduce_factor(width: int, height: int, size: int) -> int:
    """The box-reduction factor that keeps both sides at least ``REDUCING_GAP * size``."""
    return max(1, min(width, height) // (REDUCING_GAP * size))


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc (macOS, musl without malloc_trim, Windows)
        return None


_LIBC = _load_libc()


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere).
    Image buffers freed by one thread otherwise stay in its malloc arena for good."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
