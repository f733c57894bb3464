"""neuralcodes.imageio / pngstrips: bounded decoding of user images (issue 12)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from neuralcodes import imageio, pngstrips
from neuralcodes.errors import NeuralCodesError
from neuralcodes.imageio import ImageRejected, decode_image, probe
from neuralcodes.retrieval import read_image


def encode(im: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise (so PNG picks all its row filters)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w, 1), yy * 255 // max(h, 1),
                     (xx + yy) * 127 // max(w + h, 1), (xx * 3) % 256], -1)
    arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    if mode == "RGBA":
        return Image.fromarray(arr, "RGBA")
    return Image.fromarray(arr[..., :3], "RGB").convert(mode)


def old_read_image(data: bytes) -> np.ndarray:
    """``codes.read_image`` before issue 12 (the reference for ordinary images)."""
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (128, 128))
        rgb = ImageOps.exif_transpose(im).convert("RGB")
        if rgb.size != (64, 64):
            rgb = rgb.resize((64, 64), Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8)


def png_bytes_by_hand(width: int, height: int, rows: bytes = b"\x00" * 10, colour_type: int = 0,
                      depth: int = 8, interlace: int = 0, idat: bytes | None = None) -> bytes:
    """A PNG written chunk by chunk: any header with any (``rows``, or compressed ``idat``)
    data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, interlace)
    idat = zlib.compress(rows, 9) if idat is None else idat
    return (pngstrips.SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


# ------------------------------------------------------------------ same as before for ordinary


@pytest.mark.parametrize("size,fmt", [((300, 200), "JPEG"), ((1000, 800), "JPEG"),
                                      ((64, 64), "PNG"), ((300, 200), "PNG"),
                                      ((40, 30), "PNG"), ((1200, 900), "PNG"),
                                      ((257, 129), "JPEG")])
def test_ordinary_rgb_images_decode_exactly_as_before(size, fmt):
    data = encode(noise(*size), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    arr, info = decode_image(data)
    np.testing.assert_array_equal(arr, old_read_image(data))
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert (info.format, info.width, info.height, info.mode) == (fmt, *size, "RGB")
    assert info.upscaled == (size[0] < 64 or size[1] < 64)
    assert info.method == ("draft" if fmt == "JPEG" and min(size) >= 256 else "direct")


def test_bytes_paths_and_files_give_the_same_image_and_read_image_uses_it(tmp_path):
    data = encode(noise(200, 150), "JPEG")
    path = tmp_path / "x.jpg"
    path.write_bytes(data)
    a = decode_image(data)[0]
    np.testing.assert_array_equal(a, decode_image(path)[0])
    np.testing.assert_array_equal(a, decode_image(io.BytesIO(data))[0])
    np.testing.assert_array_equal(a, read_image(path))


def test_exif_orientation_is_applied_for_jpeg_and_png():
    im = Image.new("RGB", (512, 256), "white")
    im.paste((255, 0, 0), (0, 0, 256, 256))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: the red half goes on top
    for fmt in ("JPEG", "PNG"):
        data = encode(im, fmt, exif=exif)
        for budget in (imageio.DEFAULT_MAX_DECODE_BYTES, 2**19):  # whole, then in strips
            if fmt == "JPEG" and budget < 2**20:
                continue
            arr, info = decode_image(data, max_decode_bytes=budget)
            assert info.method == ({"JPEG": "draft", "PNG": "direct"}[fmt] if budget > 2**20
                                   else "strips")
            top, bottom = arr[:16].mean(axis=(0, 1)), arr[-16:].mean(axis=(0, 1))
            assert top[0] > 200 and top[1] < 60, (fmt, budget)
            assert bottom.min() > 200, (fmt, budget)


# ------------------------------------------------------------------ what changed on purpose


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    half = Image.new("RGBA", (80, 80), (255, 0, 0, 128))
    assert (decode_image(encode(clear))[0] == 255).all()
    np.testing.assert_allclose(decode_image(encode(half))[0].reshape(-1, 3).mean(0),
                               [255, 127, 127], atol=1.5)
    pal = Image.new("P", (80, 80), 3)
    pal.putpalette([0, 0, 0] * 256)
    assert (decode_image(encode(pal, transparency=3))[0] == 255).all()
    la = Image.new("LA", (400, 300), (0, 0))
    arr, info = decode_image(encode(la), max_decode_bytes=2**19)
    assert info.method == "strips" and (arr == 255).all()


@pytest.mark.parametrize("budget", [imageio.DEFAULT_MAX_DECODE_BYTES, 2**19])
def test_16_bit_greyscale_is_scaled_not_saturated(budget):
    grey = np.full((300, 400), 32768, np.uint16)
    grey[:150] = 65535
    data = encode(Image.fromarray(grey))
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "I;16"
    arr, info = decode_image(data, max_decode_bytes=budget)
    assert info.mode == "I;16" and info.method == ("direct" if budget > 2**20 else "strips")
    assert arr[:20].min() == 255 and abs(float(arr[-20:].mean()) - 128) <= 1


# ------------------------------------------------------------------ PNG strips


PNG_KINDS = {
    "RGB": lambda: noise(150, 97),
    "RGBA": lambda: noise(150, 97, "RGBA"),
    "L": lambda: noise(150, 97, "L"),
    "LA": lambda: noise(150, 97, "RGBA").convert("LA"),
    "P": lambda: noise(150, 97).quantize(200),
    "1": lambda: noise(150, 97, "1"),
    "I;16": lambda: Image.fromarray(np.asarray(noise(150, 97, "L"), np.uint16) * 257 + 3),
}


@pytest.mark.parametrize("kind", sorted(PNG_KINDS))
@pytest.mark.parametrize("rows", [2, 4, 96])
def test_strips_equal_the_whole_image_reduced(kind, rows):
    im = PNG_KINDS[kind]()
    data = encode(im)
    factor = 2
    with Image.open(io.BytesIO(data)) as full:
        expected = np.asarray(imageio.to_rgb(full.convert(full.mode)).reduce(factor))
    with Image.open(io.BytesIO(data)) as opened:
        assert pngstrips.supports(opened)
        got, _ = pngstrips.decode_strips(opened, io.BytesIO(data), imageio.to_rgb, factor, rows)
    np.testing.assert_array_equal(np.asarray(got), expected)


@pytest.mark.parametrize("bits,transparency", [(1, None), (2, 1), (4, 3), (8, None)])
def test_strips_of_low_bit_depth_palettes_with_transparency(bits, transparency):
    rng = np.random.default_rng(bits)
    idx = rng.integers(0, 2**bits, (61, 77), dtype=np.uint8)
    im = Image.fromarray(idx, "L").convert("P")
    im.putpalette(rng.integers(0, 256, 3 * 2**bits, dtype=np.uint8).tobytes())
    kwargs = {"bits": bits} | ({"transparency": transparency} if transparency is not None
                               else {})
    data = encode(im, **kwargs)
    with Image.open(io.BytesIO(data)) as full:
        assert full.tile[0][3] == ("P" if bits == 8 else f"P;{bits}")
        expected = np.asarray(imageio.to_rgb(full.convert("P")).reduce(3))
    with Image.open(io.BytesIO(data)) as opened:
        got, _ = pngstrips.decode_strips(opened, io.BytesIO(data), imageio.to_rgb, 3, 6)
    np.testing.assert_array_equal(np.asarray(got), expected)


def filtered_png(arr: np.ndarray, colour_type: int, depth: int = 8) -> bytes:
    """A PNG of ``arr`` (H, W, bytes per pixel) whose rows use filters 0-4 in turn (Pillow's
    encoder uses only None, Sub and Up)."""
    h, w, bpp = arr.shape
    x = arr.reshape(h, w * bpp).astype(np.int32)
    up = np.vstack([np.zeros((1, w * bpp), np.int32), x[:-1]])
    left = np.hstack([np.zeros((h, bpp), np.int32), x[:, :-bpp]])
    upleft = np.hstack([np.zeros((h, bpp), np.int32), up[:, :-bpp]])
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    predictors = [0 * x, left, up, (left + up) // 2, paeth]
    rows = b"".join(bytes([r % 5]) + ((x[r] - predictors[r % 5][r]) % 256).astype(np.uint8)
                    .tobytes() for r in range(h))
    return png_bytes_by_hand(w * 8 // depth if depth < 8 else w, h, rows, colour_type, depth)


@pytest.mark.parametrize("colour_type,depth,bpp", [(2, 8, 3), (6, 8, 4), (0, 8, 1), (4, 8, 2),
                                                   (0, 16, 2), (4, 16, 4), (0, 4, 1)])
@pytest.mark.parametrize("rows", [1, 3, 64])
def test_strips_undo_every_png_row_filter(colour_type, depth, bpp, rows):
    arr = np.asarray(noise(90, 37, "RGBA")).reshape(37, -1)[:, :90 * bpp].reshape(37, 90, bpp)
    data = filtered_png(np.ascontiguousarray(arr), colour_type, depth)
    with Image.open(io.BytesIO(data)) as full:
        whole = full.convert(full.mode)
        expected = np.asarray(imageio.to_rgb(whole))
    if depth == 8:  # the hand-written filters are right: Pillow reads the pixels back
        np.testing.assert_array_equal(np.asarray(whole).reshape(37, 90, -1)[..., :bpp],
                                      arr if colour_type != 2 else arr[..., :3])
    with Image.open(io.BytesIO(data)) as opened:
        got, _ = pngstrips.decode_strips(opened, io.BytesIO(data), imageio.to_rgb, 1, rows)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_a_large_png_is_decoded_in_strips_like_the_whole_image():
    im = noise(1500, 1300)
    data = encode(im)
    arr, info = decode_image(data, max_decode_bytes=4 * 2**20)
    assert info.method == "strips" and info.decode_bytes <= 4 * 2**20
    f = imageio.reduce_factor(1500, 1300, 64)
    expected = im.reduce(f).resize((64, 64), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(arr, np.asarray(expected))
    assert np.abs(arr.astype(int) - old_read_image(data)).mean() < 2  # close to plain resize


def test_a_huge_uniform_png_decodes_in_strips_within_the_default_budget():
    w = h = 4000  # 64 MB of RGB (128 MB for Pillow): over the budget whole, fine in strips
    z = zlib.compressobj(9)
    row = b"\x00" + bytes([10, 200, 30]) * w
    rows = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    data = png_bytes_by_hand(w, h, colour_type=2, idat=rows)
    arr, info = decode_image(data)
    assert info.method == "strips" and (info.width, info.height) == (w, h)
    assert info.decode_bytes < imageio.DEFAULT_MAX_DECODE_BYTES
    assert (arr == [10, 200, 30]).all()


# ------------------------------------------------------------------ refusals


def test_probe_reads_the_header_only():
    data = png_bytes_by_hand(10_000, 6_000)  # 60 Mpx (under Pillow's bomb guard)
    assert probe(data) == ("PNG", 10_000, 6_000)
    with pytest.raises(ImageRejected) as e:
        decode_image(data)
    assert e.value.status == 413 and "10000x6000 pixels" in e.value.reason


def test_too_many_pixels_and_too_much_decode_memory_are_refused_first():
    with pytest.raises(ImageRejected, match="1100x1000 pixels") as e:
        decode_image(encode(Image.new("RGB", (1100, 1000))), max_pixels=1_000_000)
    assert e.value.status == 413
    webp = encode(noise(1200, 1000), "WEBP")
    with pytest.raises(ImageRejected, match="too large to decode") as e:
        decode_image(webp, max_decode_bytes=10 * 2**20)
    assert e.value.status == 413 and "WEBP" in e.value.reason
    assert decode_image(webp)[1].format == "WEBP"  # fine within the default budget
    rgb16 = png_bytes_by_hand(300, 200, (b"\x00" + b"\x80" * 6 * 300) * 200, colour_type=2,
                              depth=16)
    assert (decode_image(rgb16)[0] == 128).all()  # whole: fine within the budget
    for data in (rgb16, png_bytes_by_hand(300, 200, colour_type=2, interlace=1)):
        with pytest.raises(ImageRejected, match="too large to decode"):
            decode_image(data, max_decode_bytes=2**18)  # and no strips for these two


def test_progressive_jpegs_count_their_coefficient_buffers():
    data = encode(noise(1600, 1200), "JPEG", progressive=True)
    baseline = encode(noise(1600, 1200), "JPEG")
    assert decode_image(baseline, max_decode_bytes=2 * 2**20)[1].method == "draft"
    with pytest.raises(ImageRejected, match="too large to decode"):
        decode_image(data, max_decode_bytes=2 * 2**20)  # ~1.9 M samples x 2 bytes x 1.5
    np.testing.assert_array_equal(decode_image(data)[0], old_read_image(data))


@pytest.mark.parametrize("case,status,words", [
    ("empty", 400, "the file is empty"),
    ("text", 415, "not a JPEG, PNG or WebP image"),
    ("gif", 415, "not a JPEG, PNG or WebP image"),
    ("truncated_png", 400, "corrupt or truncated PNG"),
    ("truncated_jpeg", 400, "corrupt or truncated JPEG"),
    ("truncated_big_png", 400, "corrupt or truncated PNG"),
])
def test_bad_images_get_one_clean_line(case, status, words):
    payload = {
        "empty": b"",
        "text": b"hello, I am not an image",
        "gif": encode(noise(30, 30), "GIF"),
        "truncated_png": encode(noise(300, 300))[:5000],
        "truncated_jpeg": encode(noise(300, 300), "JPEG")[:3000],
        "truncated_big_png": encode(noise(1500, 1300))[:200_000],
    }[case]
    for source in (payload, io.BytesIO(payload)):
        with pytest.raises(ImageRejected) as e:
            decode_image(source, max_decode_bytes=4 * 2**20)
        assert e.value.status == status and words in str(e.value)
        assert "\n" not in str(e.value) and " at 0x" not in str(e.value)
        assert str(e.value) == e.value.reason  # no name for bytes or BytesIO
        assert isinstance(e.value, NeuralCodesError)


def test_files_are_named_in_the_message(tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageRejected) as e:
        decode_image(bad, formats=None)
    assert str(e.value).startswith(f"{bad}: cannot read image (")
    assert e.value.reason.startswith("corrupt header") or "not an image" in e.value.reason
    with pytest.raises(ImageRejected, match="no such file"):
        decode_image(tmp_path / "nope.png")
    with open(bad, "rb") as f, pytest.raises(ImageRejected) as e:
        decode_image(f)
    assert e.value.source == str(bad)


def test_an_inflate_bomb_in_strips_stays_bounded():
    """A PNG whose rows decompress to far more than declared: read only what is needed."""
    w, h = 2000, 2000
    rows = (b"\x00" + b"\x07" * w) * h + b"\x00" * 50_000_000  # trailing junk, compressed tiny
    data = png_bytes_by_hand(w, h, rows, colour_type=0)
    arr, info = decode_image(data, max_decode_bytes=2 * 2**20)
    assert info.method == "strips" and (arr == 7).all()
