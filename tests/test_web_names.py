"""The web app and the commands against hostile names and leaky details (issue 21): file names
kept losslessly and shown escaped, error details that name files but never the server's folders,
rotated uploads described as displayed, a malicious checkpoint refused in one line. Every
crafted file is generated here (``test_web_attacks.py``: the attacks on the server itself).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from helpers import random_jpeg, scan_bomb_jpeg, upload
from neuralcodes import imageio
from neuralcodes.cli import main
from neuralcodes.config import ServeConfig
from neuralcodes.errors import NeuralCodesError
from neuralcodes.text import printable

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture(scope="module")
def client(web_run: Path) -> Iterator[TestClient]:
    from neuralcodes.web import create_app

    with TestClient(create_app(web_run, device="cpu")) as c:
        yield c


# --------------------------------------------------------------------------- names


def test_printable_escapes_what_could_drive_a_terminal_and_keeps_the_rest():
    assert printable("Zoë 写真 01.jpg") == "Zoë 写真 01.jpg"
    assert printable("a\x1b]0;pwned\x07b") == "a\\x1b]0;pwned\\x07b"
    assert printable("red\x1b[31m\nline") == "red\\x1b[31m\\x0aline"
    assert printable(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"  # not UTF-8
    assert printable("evil\u202egnp.exe") == "evil\\u202egnp.exe"  # bidi override


HOSTILE = [b"plain.png", b"caf\xe9-latin1.png", b"title\x1b]0;pwned\x07.png",
           b"red\x1b[31mRED\nfake line.png"]


class StrictStdout(io.TextIOWrapper):
    """A stdout that refuses anything UTF-8 cannot encode (as a strict UTF-8 terminal)."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)

    def text(self) -> str:
        return self.buffer.getvalue().decode("utf-8")  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def hostile_index(web_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    for i, name in enumerate(HOSTILE):
        Image.new("RGB", (70, 70), (40 * i, 200, 90)).save(os.fsencode(folder) + b"/" + name,
                                                            "PNG")
    index = folder.parent / "hostile-index"
    out = StrictStdout()
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "stdout", out)
    try:
        assert main(["index", str(folder), "--run", str(web_run), "--out", str(index),
                     "--device", "cpu", "--no-progress"]) == 0
    finally:
        mp.undo()
    assert "\x1b" not in out.text() and f"{len(HOSTILE)} images indexed" in out.text()
    return folder, index


def test_index_keeps_names_losslessly(hostile_index):
    from neuralcodes.retrieval.collection import FolderIndex

    folder, index = hostile_index
    stored = sorted(os.fsencode(p) for p in FolderIndex(index).paths)
    assert stored == sorted(os.fsencode(folder) + b"/" + n for n in HOSTILE)


def test_search_prints_every_name_escaped_under_a_strict_utf8_stdout(web_run, hostile_index,
                                                                      monkeypatch, capsys):
    folder, index = hostile_index
    out = StrictStdout()
    monkeypatch.setattr(sys, "stdout", out)
    query = os.fsdecode(os.fsencode(folder) + b"/" + HOSTILE[2])
    assert main(["search", query, "--run", str(web_run), "--index", str(index), "-k", "4",
                 "--device", "cpu"]) == 0
    text = out.text()
    assert "\x1b" not in text and "\x07" not in text and len(text.splitlines()) == 5
    assert "caf\\xe9-latin1.png" in text and "title\\x1b]0;pwned\\x07.png" in text
    assert "red\\x1b[31mRED\\x0afake line.png" in text
    # a bad input's one error line is escaped too
    assert main(["search", query + "\x1b[2J.png", "--run", str(web_run)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[2J" in err and len(err.splitlines()) == 1


def test_the_web_app_serves_hostile_names_escaped_and_never_a_500(web_run, hostile_index):
    from neuralcodes.web import create_app

    folder, index = hostile_index
    with TestClient(create_app(web_run, index, device="cpu")) as c:
        r = c.post("/api/search", data={"database": "index", "k": "4"},
                   files={"file": ("x\x1b[2J\u202e.png", random_jpeg(), "image/jpeg")})
        assert r.status_code == 200, r.text
        names = {h["class_name"] for h in r.json()["layers"][0]["hits"]}
        assert names == {printable(os.fsdecode(n)) for n in HOSTILE}
        assert all(n.isprintable() for n in names)
        assert r.json()["query"]["filename"].isprintable()
        # an indexed file that is gone: 404 naming the file, never the server's folders
        missing = next(i for i, h in enumerate(c.app.state.retrieval.index.paths)
                       if h.endswith("plain.png"))
        os.rename(c.app.state.retrieval.index.paths[missing], folder / "moved.png")
        try:
            r = c.get(f"/api/index-image/{missing}")
        finally:
            os.rename(folder / "moved.png", c.app.state.retrieval.index.paths[missing])
        assert r.status_code == 404 and "plain.png" in r.json()["detail"]
        assert str(folder) not in r.json()["detail"] and "/" not in r.json()["detail"]


def _refusing_index(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Loading an index (and only an index) fails with ``error``."""
    from neuralcodes.web import service

    real = service.Searcher

    def searcher(*args: object, index: object = None, **kwargs: object) -> object:
        if index is not None:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(service, "Searcher", searcher)


def test_no_error_detail_names_a_server_folder(web_run, hostile_index, tmp_path, monkeypatch):
    """Every error a client can cause, with the run and the index in pytest's temporary folder:
    no answer holds that folder; the details name files."""
    import errno

    from neuralcodes.files import write_error
    from neuralcodes.model.checkpoint import load_checkpoint
    from neuralcodes.web import create_app

    base = str(tmp_path.parents[1])  # --basetemp: web_run, the index and tmp_path are below it
    assert str(web_run).startswith(base) and str(hostile_index[1]).startswith(base)
    folder, index = hostile_index
    short = tmp_path / "short"  # an index that records more images than it holds
    shutil.copytree(index, short)
    manifest = json.loads((short / "manifest.json").read_text())
    (short / "manifest.json").write_text(json.dumps({**manifest, "count": 9}))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(NeuralCodesError) as refused_checkpoint:
        load_checkpoint(evil)
    disk_full = write_error(tmp_path / "codes" / "index.npz", tmp_path / "partial",
                            OSError(errno.ENOSPC, "No space left on device"), 41 << 20)
    answers = []
    serve = ServeConfig(max_jpeg_scans=50)
    with TestClient(create_app(web_run, index, device="cpu", serve=serve)) as c:
        missing = next(i for i, p in enumerate(c.app.state.retrieval.index.paths)
                       if p.endswith("plain.png"))
        (folder / "plain.png").rename(folder / "moved.png")
        try:
            answers.append(("plain.png", c.get(f"/api/index-image/{missing}")))
        finally:
            (folder / "moved.png").rename(folder / "plain.png")
        for data in (b"", b"not an image", scan_bomb_jpeg(60), random_jpeg()[:400]):
            answers.append((None, upload(c, data, name=f"{folder}/q.jpg")))
        answers += [(None, c.get("/api/upload/0123456789abcdef")),
                    (None, c.get("/api/figure/nope.png")), (None, c.get("/api/image/99999")),
                    (None, c.post("/api/search", data={"database": "elsewhere"},
                                  files={"file": ("q.jpg", random_jpeg(), "image/jpeg")}))]
    refusals = [(short, None), (tmp_path / "gone.npz", None),
                (index, refused_checkpoint.value), (index, disk_full)]
    for bad, error in refusals:
        if error is not None:
            _refusing_index(monkeypatch, error)
        with TestClient(create_app(web_run, bad, device="cpu")) as c:
            r = c.post("/api/search", data={"database": "index"},
                       files={"file": ("q.jpg", random_jpeg(), "image/jpeg")})
        assert r.status_code == 409 and "the index was refused" in r.json()["detail"]
        name = (Path(str(error).split(":")[0]) if error is not None else bad).name
        answers.append((name, r))
        monkeypatch.undo()
    assert len(answers) == 13
    for name, r in answers:
        assert 400 <= r.status_code < 500 and base not in r.text, r.text
        detail = r.json()["detail"]
        assert name is None or name in detail, (name, detail)
        if isinstance(detail, str):
            assert "/" not in detail.replace("api/index-image", ""), detail


# --------------------------------------------------------------------------- smaller


def test_an_exif_rotated_upload_is_described_as_displayed(client):
    im = Image.new("RGB", (300, 200), (10, 120, 200))  # stored 300x200, shown 200x300
    exif = Image.Exif()
    exif[imageio.ORIENTATION_TAG] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes())
    r = upload(client, buf.getvalue())
    assert r.status_code == 200, r.text
    q = r.json()["query"]
    assert (q["width"], q["height"]) == (200, 300)
    assert "200×300" in q["notes"][0] and "300×200" not in " ".join(q["notes"])
    assert imageio.probe(buf.getvalue()) == ("JPEG", 200, 300)


def test_a_malicious_checkpoint_is_not_a_neuralcodes_checkpoint(tmp_path):
    import torch

    from neuralcodes.model.checkpoint import load_checkpoint

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    path = tmp_path / "best.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(NeuralCodesError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert "not a neuralcodes checkpoint" in message and "system" in message
    assert "weights_only" not in message and "\n" not in message
