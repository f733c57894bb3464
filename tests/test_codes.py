"""Neural codes: extraction (eval mode, batched, normalised, pre/post ReLU), files, images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from neuralcodes.config import ModelConfig
from neuralcodes.errors import NeuralCodesError
from neuralcodes.model import ConvNet
from neuralcodes.retrieval import (
    CodeSet,
    extract_code_variants,
    extract_codes,
    image_files,
    l2_normalize,
    load_codes,
    read_image,
    read_images,
)
from neuralcodes.runtime import to_input


@pytest.fixture(scope="module")
def tiny_model() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet(5, ModelConfig(conv_widths=(4, 4, 4, 4, 4), fc_width=16), image_size=64)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (11, 64, 64, 3), dtype=np.uint8)


def test_codes_are_unit_length_model_codes_in_eval_mode(tiny_model, images):
    tiny_model.train()  # dropout on: extraction must still be deterministic, mode restored
    got = extract_codes(tiny_model, images, relu=False, batch_size=4, progress=False)
    again = extract_codes(tiny_model, images, relu=False, batch_size=11, progress=False)
    assert tiny_model.training
    assert {k: v.shape for k, v in got.items()} == {"5": (11, 256), "6": (11, 16), "7": (11, 16)}
    tiny_model.eval()
    with torch.no_grad():
        raw = tiny_model.forward_intermediates(to_input(images), ("5", "6", "7"))
    for layer, x in got.items():
        assert x.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
        expected = raw[layer].numpy()
        np.testing.assert_allclose(x, expected / np.linalg.norm(expected, axis=1, keepdims=True),
                                   atol=1e-5)
        np.testing.assert_allclose(x, again[layer], atol=1e-6)
    assert (got["6"] < 0).any()  # pre-ReLU codes keep negative activations


def test_post_relu_variant_equals_model_relu_codes(tiny_model, images):
    both = extract_code_variants(tiny_model, images, ("6", "7"), progress=False)
    tiny_model.eval()
    with torch.no_grad():
        post = {k: F.relu(v) for k, v in
                tiny_model.forward_intermediates(to_input(images), ("6", "7")).items()}
    for layer in ("6", "7"):
        x = both[True][layer]
        assert (x >= 0).all()
        e = post[layer].numpy()
        np.testing.assert_allclose(x, e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True),
                                                     1e-12), atol=1e-5)
        assert not np.allclose(both[False][layer], x)


def test_bf16_codes_are_close_to_fp32(tiny_model, images):
    fp32 = extract_codes(tiny_model, images, layers=("7",), progress=False)["7"]
    bf16 = extract_codes(tiny_model, images, layers=("7",), precision="bf16", progress=False)["7"]
    assert bf16.dtype == np.float32
    assert (np.sum(fp32 * bf16, axis=1) > 0.98).all()


def test_bad_arguments_are_clear_errors(tiny_model, images):
    with pytest.raises(NeuralCodesError, match="batch size"):
        extract_codes(tiny_model, images, batch_size=0, progress=False)
    with pytest.raises(NeuralCodesError, match="precision"):
        extract_codes(tiny_model, images, precision="fp8", progress=False)
    with pytest.raises(NeuralCodesError, match="images must be"):
        extract_codes(tiny_model, images[..., 0], progress=False)


def test_l2_normalize_keeps_zero_rows_zero():
    x = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]])


def test_codes_file_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    layers = {k: l2_normalize(rng.standard_normal((4, d))) for k, d in (("5", 8), ("6", 3))}
    codes = CodeSet(layers, np.array([7, 3, 9, 1]), np.array([0, 1, 1, 2]), True, list("abcd"))
    path = codes.save(tmp_path / "codes" / "ood-postrelu.npz")
    back = load_codes(path)
    assert back.relu is True and back.paths == list("abcd") and len(back) == 4
    np.testing.assert_array_equal(back.index, codes.index)
    np.testing.assert_array_equal(back.labels, codes.labels)
    for k in layers:
        np.testing.assert_array_equal(back.layers[k], layers[k])
    with np.load(path) as f:  # the contract's keys
        assert {"code5", "code6", "index", "labels", "relu"} <= set(f.files)
    assert not list(tmp_path.glob("codes/.*"))  # no temporary left behind
    CodeSet(layers, codes.index, codes.labels, False).save(tmp_path / "plain.npz")
    assert load_codes(tmp_path / "plain.npz").paths is None


def test_load_codes_errors(tmp_path):
    with pytest.raises(NeuralCodesError, match="no codes file"):
        load_codes(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(NeuralCodesError, match="not a readable codes file"):
        load_codes(tmp_path / "bad.npz")


def _write(path: Path, img: Image.Image, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def test_read_image_any_size_and_format(tmp_path):
    big = Image.fromarray(np.full((120, 200, 3), (200, 10, 10), np.uint8))
    png = _write(tmp_path / "a" / "big.png", big.convert("RGBA"))
    grey = _write(tmp_path / "b" / "grey.JPG", Image.new("L", (30, 40), 128))
    for path in (png, grey):
        arr = read_image(path)
        assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert np.abs(read_image(png).astype(int) - [200, 10, 10]).max() <= 2
    assert (read_image(grey) == 128).all()


def test_unreadable_files_are_reported_not_fatal(tmp_path):
    ok = _write(tmp_path / "ok.bmp", Image.new("RGB", (64, 64), (1, 2, 3)))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    (tmp_path / "notes.txt").write_text("not an image")
    files = image_files(tmp_path)
    assert [p.name for p in files] == ["broken.jpg", "ok.bmp"]
    imgs, read, failed = read_images(files)
    assert imgs.shape == (1, 64, 64, 3) and read == [ok]
    assert failed[0][0].name == "broken.jpg" and "cannot read image" in failed[0][1]
    with pytest.raises(NeuralCodesError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(NeuralCodesError, match="not a folder"):
        image_files(tmp_path / "nope")


def test_read_image_applies_exif_orientation(tmp_path):
    from PIL import Image

    from neuralcodes.retrieval import read_image

    im = Image.new("RGB", (128, 64), "white")
    im.paste((255, 0, 0), (0, 0, 64, 64))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    arr = read_image(tmp_path / "phone.jpg")
    # Displayed upright, the red half is on top.
    assert arr[:16].mean(axis=(0, 1))[0] > 200 and arr[:16].mean(axis=(0, 1))[1] < 60
    assert arr[-16:].mean() > 200
