"""The downloader against a local stdlib HTTP server that honours Range and can cut connections."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from helpers import make_tiny_imagenet
from neuralcodes import datasets as registry
from neuralcodes.cli import main
from neuralcodes.data import Dataset, cache, fetch_official, prepare
from neuralcodes.data.download import download, md5sum
from neuralcodes.errors import NeuralCodesError
from neuralcodes.runs import RunDir


@dataclass
class Server:
    """What the test server serves and how it misbehaves; it records every Range header."""

    payload: bytes
    url: str = ""
    cut_at: list[int] = field(default_factory=list)  # per response: close after this many bytes
    stall_at: list[int] = field(default_factory=list)  # per response: stall after this many bytes
    release: threading.Event = field(default_factory=threading.Event)  # ends the stalls
    honour_range: bool = True
    status: int = 200
    ranges: list[str | None] = field(default_factory=list)


def _handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:  # noqa: N802
            rng = self.headers.get("Range")
            server.ranges.append(rng)
            if server.status != 200:
                self.send_error(server.status)
                return
            data, start = server.payload, 0
            if rng and server.honour_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if server.stall_at:
                self.wfile.write(body[: server.stall_at.pop(0)])
                self.wfile.flush()
                server.release.wait(30)  # keep the connection open, sending nothing
                self.close_connection = True
                return
            if server.cut_at:
                self.wfile.write(body[: server.cut_at.pop(0)])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def serve() -> Iterator[callable]:
    started: list[http.server.ThreadingHTTPServer] = []
    specs: list[Server] = []

    def start(payload: bytes, **kwargs: object) -> Server:
        spec = Server(payload, **kwargs)
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(spec))
        threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
        started.append(httpd)
        specs.append(spec)
        spec.url = f"http://127.0.0.1:{httpd.server_address[1]}/tiny-imagenet-200.zip"
        return spec

    yield start
    for spec in specs:
        spec.release.set()
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def test_full_download(serve, tmp_path: Path) -> None:  # noqa: ANN001
    srv = serve(PAYLOAD)
    dest = download(srv.url, tmp_path / "a.zip", MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD and md5sum(dest) == MD5
    assert srv.ranges == [None] and not (tmp_path / "a.zip.part").exists()
    assert download(srv.url, dest, MD5, progress=False) == dest and len(srv.ranges) == 1


def test_resume_after_the_server_cuts_the_connection(serve, tmp_path: Path) -> None:  # noqa: ANN001
    srv = serve(PAYLOAD, cut_at=[100_000, 50_000])
    dest = download(srv.url, tmp_path / "a.zip", MD5, progress=False, backoff=0)
    assert dest.read_bytes() == PAYLOAD
    assert srv.ranges == [None, "bytes=100000-", "bytes=150000-"]


def test_resume_a_part_file_left_by_an_earlier_run(serve, tmp_path: Path) -> None:  # noqa: ANN001
    srv = serve(PAYLOAD)
    (tmp_path / "a.zip.part").write_bytes(PAYLOAD[:123_456])
    download(srv.url, tmp_path / "a.zip", MD5, progress=False)
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD and srv.ranges == ["bytes=123456-"]


def test_complete_part_file_gets_416_and_is_checked(serve, tmp_path: Path) -> None:  # noqa: ANN001
    srv = serve(PAYLOAD)
    (tmp_path / "a.zip.part").write_bytes(PAYLOAD)
    download(srv.url, tmp_path / "a.zip", MD5, progress=False)
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD and srv.ranges == ["bytes=300000-"]


def test_a_stalled_connection_keeps_every_byte_received(serve, tmp_path: Path) -> None:  # noqa: ANN001
    n = 123_457  # not a multiple of any block size
    srv = serve(PAYLOAD, stall_at=[n, 0])  # the first response stalls after n bytes, the next at 0
    with pytest.raises(NeuralCodesError, match=f"resume from {n:,} bytes"):
        download(srv.url, tmp_path / "a.zip", MD5, progress=False, retries=0, timeout=0.5,
                 backoff=0)
    assert (tmp_path / "a.zip.part").read_bytes() == PAYLOAD[:n]  # every received byte is kept
    dest = download(srv.url, tmp_path / "a.zip", MD5, progress=False)
    assert md5sum(dest) == MD5 and srv.ranges == [None, f"bytes={n}-", f"bytes={n}-"]


def test_server_without_range_support_restarts(serve, tmp_path: Path) -> None:  # noqa: ANN001
    srv = serve(PAYLOAD, cut_at=[100_000], honour_range=False)
    download(srv.url, tmp_path / "a.zip", MD5, progress=False, backoff=0)
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD
    assert srv.ranges == [None, "bytes=100000-"]


def test_md5_mismatch_is_an_error_and_caches_nothing(serve, tmp_path: Path) -> None:  # noqa: ANN001
    srv = serve(PAYLOAD)
    with pytest.raises(NeuralCodesError, match="md5 mismatch") as e:
        download(srv.url, tmp_path / "a.zip", "0" * 32, progress=False)
    assert MD5 in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_gives_up_after_retries_keeping_the_part(serve, tmp_path: Path) -> None:  # noqa: ANN001
    srv = serve(PAYLOAD, cut_at=[1000] + [0] * 10)
    with pytest.raises(NeuralCodesError, match="run again to resume from 1,000 bytes"):
        download(srv.url, tmp_path / "a.zip", MD5, progress=False, retries=2, backoff=0)
    assert not (tmp_path / "a.zip").exists()
    assert (tmp_path / "a.zip.part").read_bytes() == PAYLOAD[:1000]
    assert len(srv.ranges) == 4  # the first try, then 3 tries without progress


def test_http_error_and_unreachable_host(serve, tmp_path: Path) -> None:  # noqa: ANN001
    srv = serve(PAYLOAD, status=404)
    with pytest.raises(NeuralCodesError, match="HTTP 404"):
        download(srv.url, tmp_path / "a.zip", MD5, progress=False)
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NeuralCodesError, match="failed after 1 retries"):
        download(f"http://127.0.0.1:{port}/x.zip", tmp_path / "b.zip", MD5, progress=False,
                 retries=1, backoff=0)
    assert list(tmp_path.iterdir()) == []


def test_fetch_then_prepare_a_served_archive(serve, tmp_path: Path) -> None:  # noqa: ANN001
    archive = make_tiny_imagenet(tmp_path / "gen", 3, 4, zip_it=True).read_bytes()
    srv = serve(archive, cut_at=[len(archive) // 2])
    cache = tmp_path / "cache"
    got = fetch_official(cache, progress=False, url=srv.url, md5=hashlib.md5(archive).hexdigest())
    assert got == cache / "downloads" / "tiny-imagenet-200.zip" and got.read_bytes() == archive
    ds = Dataset.load(prepare(got, cache, progress=False))
    assert len(ds) == 12 and len(ds.wnids) == 3


# --------------------------------------------------------------------------------------------
# Where the archive comes from: --url / data.url, else $NEURALCODES_URL, else cs231n

TINY_TRAIN = ["--set", "model.conv_widths=[4,4,4,4,4]", "--set", "model.fc_width=16",
              "--set", "data.ood_classes=2", "--set", "train.max_epochs=1",
              "--set", "train.batch_size=16", "--device", "cpu", "--no-progress"]


def _dead_url() -> str:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/tiny-imagenet-200.zip"


@pytest.fixture
def mirror(serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Server, bytes]:  # noqa: ANN001
    """A local mirror serving a generated archive, which the md5 check is told to expect."""
    archive = make_tiny_imagenet(tmp_path / "gen", 6, 20, zip_it=True).read_bytes()
    spec = registry.DATASETS[registry.DEFAULT]
    remote = dataclasses.replace(spec.remote, md5=hashlib.md5(archive).hexdigest())
    monkeypatch.setitem(registry.DATASETS, registry.DEFAULT,
                        dataclasses.replace(spec, remote=remote))
    monkeypatch.delenv("NEURALCODES_URL", raising=False)
    return serve(archive), archive


@pytest.mark.parametrize("how", ["--url", "NEURALCODES_URL", "--url over NEURALCODES_URL"])
def test_prepare_downloads_from_a_mirror(mirror, tmp_path: Path, how: str,  # noqa: ANN001
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    srv, archive = mirror
    argv = ["prepare", "--cache-dir", str(tmp_path / "cache"), "--set", "data.ood_classes=2",
            "--no-progress"]
    if how == "NEURALCODES_URL":
        monkeypatch.setenv("NEURALCODES_URL", srv.url)
    else:
        argv += ["--url", srv.url]
        if how != "--url":
            monkeypatch.setenv("NEURALCODES_URL", _dead_url())
    assert main(argv) == 0
    assert (tmp_path / "cache" / "downloads" / "tiny-imagenet-200.zip").read_bytes() == archive
    assert srv.ranges == [None]


def test_train_downloads_from_url_and_records_it(mirror, tmp_path: Path) -> None:  # noqa: ANN001
    srv, _ = mirror
    run = tmp_path / "run"
    assert main(["train", "--url", srv.url, "--cache-dir", str(tmp_path / "cache"), "--out",
                 str(run), *TINY_TRAIN]) == 0
    assert srv.ranges == [None]
    saved = json.loads(RunDir(run).config.read_text())
    assert saved["config"]["data"]["url"] == srv.url


def test_the_address_defaults_and_bad_addresses(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("NEURALCODES_URL", raising=False)
    assert cache.download_url(None) == registry.get("tiny-imagenet").remote.url
    monkeypatch.setenv("NEURALCODES_URL", "http://mirror.example/t.zip")
    assert cache.download_url(None) == "http://mirror.example/t.zip"
    assert cache.download_url("file:///data/t.zip") == "file:///data/t.zip"
    for argv, env, says in [
            (["prepare", "--url", "mirror.example/t.zip"], None, "data.url: not a download"),
            (["run", "--url", "nope"], None, "data.url: not a download"),
            (["train", "--url", "nope"], None, "data.url: not a download"),
            (["prepare"], "not a url", "NEURALCODES_URL is not a download address")]:
        if env:
            monkeypatch.setenv("NEURALCODES_URL", env)
        code = main([*argv, "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
        err = capsys.readouterr().err.splitlines()
        assert code == 2 and len(err) == 1 and says in err[0], (argv, err)
