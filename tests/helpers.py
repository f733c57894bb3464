"""Test helpers shared by every test file (``from helpers import ...``; ``tests/`` is on the
path through pytest's ``pythonpath`` setting). Test modules import only from here, never from
each other.

``make_tiny_imagenet`` writes a small generated dataset in the official Tiny ImageNet layout,
so tests never need the real images; the tiny configs and runs below train in seconds.
"""

from __future__ import annotations

import colorsys
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from neuralcodes.config import Config, DataConfig, ModelConfig, TrainConfig
from neuralcodes.runs import RunDir, TrainedRun

#: The shared 40-class real-image zip (never copied into the repo); tests skip without it.
SHARED_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "tiny-imagenet-40.zip"

#: Layout root inside the generated folder / zip, as in the official archive.
DATASET_DIR = "tiny-imagenet-200"


def fixture_wnids(n_classes: int) -> list[str]:
    """The wnids ``make_tiny_imagenet`` uses (already sorted): n00000100, n00000200, ..."""
    return [f"n{(i + 1) * 100:08d}" for i in range(n_classes)]


def class_image(label: int, n_classes: int, rng: np.random.Generator, *,
                learnable: bool = True, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """One uint8 HxWx3 image of class ``label``: a class colour times class-specific stripes,
    plus noise (``learnable``), or plain noise."""
    h, w = size
    if not learnable:
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hue = (label * 0.618034) % 1.0  # golden-ratio hues: well spread for any class count
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9)) * 255
    angle = np.pi * ((label * 37) % 180) / 180
    freq = 2 + label % 4
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
    img = colour[None, None, :] * (0.45 + 0.55 * stripes[..., None])
    img = img + rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def extras_paths(n_classes: int, per_class: int) -> dict[str, str]:
    """Where ``extras=True`` puts its files (relative to the dataset root):
    ``{"greyscale": ..., "corrupt": ..., "wrong_size": ...}``."""
    w = fixture_wnids(n_classes)
    return {kind: f"train/{w[k % n_classes]}/images/{w[k % n_classes]}_{per_class + k}.JPEG"
            for k, kind in enumerate(("greyscale", "corrupt", "wrong_size"))}


def make_tiny_imagenet(root: Path, n_classes: int = 6, per_class: int = 20, *,
                       learnable: bool = True, extras: bool = False,
                       zip_it: bool = False) -> Path:
    """Write a generated Tiny ImageNet in the official layout under ``root``.

    Layout: ``tiny-imagenet-200/{wnids.txt, words.txt, train/<wnid>/<wnid>_boxes.txt,
    train/<wnid>/images/<wnid>_<i>.JPEG, val/val_annotations.txt, val/images/val_<k>.JPEG,
    test/images/test_<k>.JPEG}``; wnids are :func:`fixture_wnids` and class ``c`` is named
    ``"class <c>, synthetic"`` in words.txt. All train images are 64x64 RGB JPEGs; with
    ``learnable`` each class has its own colour and stripe pattern (a tiny ConvNet learns it fast).

    ``extras=True`` adds three more train files (``p = per_class``): ``<wnid0>_<p>.JPEG``
    greyscale (valid: cached as RGB), ``<wnid1>_<p+1>.JPEG`` a corrupt JPEG and
    ``<wnid2>_<p+2>.JPEG`` a 48x32 image (both rejected), where wnid0/1/2 are the 1st/2nd/3rd
    classes (wrapping around when there are fewer). See :func:`extras_paths`.

    Returns the ``tiny-imagenet-200`` folder, or with ``zip_it`` the zip
    ``root/tiny-imagenet-200.zip`` (holding that folder; nothing else is written).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    wnids = fixture_wnids(n_classes)
    files: dict[str, bytes] = {}
    files["wnids.txt"] = "".join(f"{w}\n" for w in wnids).encode()
    words = [f"{w}\tclass {c}, synthetic" for c, w in enumerate(wnids)]
    words.append("n99999999\tan unused class")
    files["words.txt"] = ("\n".join(words) + "\n").encode()
    for c, w in enumerate(wnids):
        boxes = []
        for i in range(per_class):
            name = f"{w}_{i}.JPEG"
            files[f"train/{w}/images/{name}"] = _jpeg(class_image(c, n_classes, rng,
                                                                  learnable=learnable))
            boxes.append(f"{name}\t0\t0\t63\t63")
        files[f"train/{w}/{w}_boxes.txt"] = ("\n".join(boxes) + "\n").encode()
    val_rows = []
    for k in range(min(n_classes, 4)):
        files[f"val/images/val_{k}.JPEG"] = _jpeg(class_image(k, n_classes, rng))
        val_rows.append(f"val_{k}.JPEG\t{wnids[k]}\t0\t0\t63\t63")
    files["val/val_annotations.txt"] = ("\n".join(val_rows) + "\n").encode()
    for k in range(2):
        files[f"test/images/test_{k}.JPEG"] = _jpeg(class_image(k % n_classes, n_classes, rng))
    if extras:
        grey_path, corrupt_path, small_path = extras_paths(n_classes, per_class).values()
        grey = Image.fromarray(class_image(0, n_classes, rng)).convert("L")
        buf = io.BytesIO()
        grey.save(buf, format="JPEG")
        files[grey_path] = buf.getvalue()
        files[corrupt_path] = _jpeg(class_image(1, n_classes, rng))[:300]  # cut short
        files[small_path] = _jpeg(class_image(2 % n_classes, n_classes, rng, size=(32, 48)))
    if zip_it:
        path = root / f"{DATASET_DIR}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for rel, data in files.items():
                z.writestr(f"{DATASET_DIR}/{rel}", data)
        return path
    base = root / DATASET_DIR
    for rel, data in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return base


#: The sizes (width, height) :func:`make_image_folder` cycles through: larger, smaller,
#: non-square and square, so every image is resized to 64x64 by the bounded decoder.
FOLDER_SIZES = ((97, 64), (48, 80), (64, 64), (130, 101), (40, 40))


def folder_classes(n_classes: int) -> list[str]:
    """The class folder names ``make_image_folder`` uses (already sorted): a-ants, b-bees, ..."""
    names = ["ants", "bees", "cats", "dogs", "eels", "foxes", "gnus", "hens", "ibis", "jays"]
    return [f"{chr(97 + i)}-{names[i % len(names)]}" for i in range(n_classes)]


def make_image_folder(root: Path, n_classes: int = 6, per_class: int = 10) -> Path:
    """A labelled image folder under ``root/images``: one subfolder per class
    (:func:`folder_classes`), images of mixed sizes (:data:`FOLDER_SIZES`) alternating JPEG
    (``.jpg``) and PNG (``.PNG``, an upper-case suffix), plus a ``notes.txt`` in each class and
    a hidden folder, both ignored. Learnable like :func:`make_tiny_imagenet`'s images."""
    rng = np.random.default_rng(4321)
    base = Path(root) / "images"
    (base / ".thumbnails").mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(folder_classes(n_classes)):
        folder = base / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "notes.txt").write_text("not an image\n")
        for i in range(per_class):
            w, h = FOLDER_SIZES[(c + i) % len(FOLDER_SIZES)]
            img = Image.fromarray(class_image(c, n_classes, rng, size=(h, w)))
            if i % 2:
                img.save(folder / f"img{i:03d}.PNG")
            else:
                img.save(folder / f"img{i:03d}.jpg", quality=90)
    return base


# ----------------------------------------------------------------------------- tiny runs

TINY_MODEL = ModelConfig(conv_widths=(8, 8, 8, 8, 8), fc_width=32, dropout=0.0)
#: With batch norm the tiny model learns the fixture reliably (100% within ~15 epochs, checked
#: over several seeds); without it, patience-0 early stopping often fires on a plateau.
LEARNER = dataclasses.replace(TINY_MODEL, batch_norm=True)


def tiny_config(data: DataConfig, model: ModelConfig = TINY_MODEL, **train: object) -> Config:
    """A tiny model on the tiny fixture (fast enough for many epochs on a CPU)."""
    t = {"lr": 3e-3, "batch_size": 16, "max_epochs": 40, "device": "cpu", "threads": 1, **train}
    return Config(data=data, model=model, train=TrainConfig(**t))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def torchrun_train(cfg: Config, out: Path, processes: int, **env: str) -> None:
    """``neuralcodes train`` with ``cfg`` into ``out`` under torchrun; asserts it succeeds."""
    cfg_file = out.with_name(out.name + "-config.json")
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(processes), "-m", "neuralcodes", "train", "--config", str(cfg_file), "--out",
           str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def trained_web_run(tmp_path_factory: pytest.TempPathFactory, source: Path,
                    cache_root: Path) -> Path:
    """A tiny ConvNet trained for two epochs on the shared tiny dataset (conftest's
    ``tiny_source``: 4 in-domain + 2 ood classes), evaluated (eval.json, curves.png).

    Built once per session (this module and the browser test share it). The high learning rate
    makes its codes differ clearly between images: with the default 1e-4 the tiny net's codes
    are nearly identical after two epochs, and rankings would hinge on float rounding.
    """
    from neuralcodes.evaluation import evaluate
    from neuralcodes.training.loop import train
    from neuralcodes.training.records import is_finished

    out = tmp_path_factory.getbasetemp() / "web-run"
    if not is_finished(out):
        data = DataConfig(source=str(source), cache_dir=str(cache_root), ood_classes=2)
        cfg = Config(data=data, model=ModelConfig(conv_widths=(4, 4, 4, 4, 4), fc_width=16),
                     train=TrainConfig(max_epochs=2, batch_size=16, lr=1e-2, device="cpu"))
        train(cfg, out, progress=False)
    if not RunDir(out).eval_json.is_file():
        evaluate(TrainedRun.open(out, device="cpu", progress=False))
    return out


def scan_bomb_jpeg(scans: int, side: int = 64) -> bytes:
    """A progressive JPEG of a flat ``side`` x ``side`` image whose last (tiny, all-zero
    refinement) scan is repeated until the file holds ``scans`` scans: a few bytes per scan,
    while libjpeg goes over every block of the image for each one (``side=2048``: ~3 ms a scan
    here). Crafted in memory; never written to the repository."""
    import re

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 130, 140)).save(buf, "JPEG", progressive=True,
                                                         quality=90)
    data = buf.getvalue()
    starts = [m.start() for m in re.finditer(rb"\xff\xda", data)]
    last = data[starts[-1]:-2]  # the last scan, up to EOI
    return data[:-2] + last * (scans - len(starts)) + b"\xff\xd9"


#: Debian's Chromium, for the browser tests (they skip without it).
CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def serving(app: Any, **config: Any) -> Iterator[tuple[str, int]]:
    """``app`` under a real uvicorn server in a thread, on a free 127.0.0.1 port, for the
    ``with`` block: yields ``(host, port)``. ``config``: more ``uvicorn.Config`` arguments
    (``http=``, ``timeout_keep_alive=``, ...)."""
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, **{"host": "127.0.0.1", "port": 0,
                                                "log_level": "warning", **config}))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    host, port = srv.servers[0].sockets[0].getsockname()[:2]
    try:
        yield host, port
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (:data:`CHROMIUM`) driven by Playwright, closed after the block;
    the test is skipped without either."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


def settle(pg: Any) -> None:
    """Wait until the app's page has drawn its current address: a pending hashchange first gets
    one round through the page's task queue (a MessageChannel, which ``page.clock`` leaves real),
    then no view may be loading."""
    pg.evaluate("() => new Promise(r => { const c = new MessageChannel(); "
                "c.port1.onmessage = () => r(); c.port2.postMessage(0); })")
    pg.wait_for_function("() => document.querySelector('#run-name').textContent && "
                         "!document.querySelector('.busy')")


def random_jpeg(side: int = 80, **kwargs: Any) -> bytes:
    """A ``side`` x ``side`` JPEG of random pixels (``kwargs``: Pillow's save options, e.g.
    ``progressive=True``)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(side)
    Image.fromarray(rng.integers(0, 255, (side, side, 3), np.uint8)).save(buf, "JPEG", **kwargs)
    return buf.getvalue()


def upload(client: Any, data: bytes, name: str = "q.jpg", **headers: str) -> Any:
    """POST ``data`` to the web app's ``/api/search`` as the file ``name``."""
    return client.post("/api/search", files={"file": (name, data, "image/jpeg")},
                       headers=headers)
