"""Load test of ``neuralcodes serve`` as a real server process (issue 12).

Usage: ``PYTHONPATH=src python benchmarks/web_load.py [--run RUN] [--src SRC]`` (the attacks
only: ``--searches 0 --uploads 0``; one of them: ``--attacks big_uploads``). Without
``--run`` it trains a tiny run first (the tests' ``trained_web_run``: 4+2 generated classes,
two epochs). The server runs as ``python -m neuralcodes serve RUN --port P`` on 127.0.0.1 (with
``--src``: another checkout's ``src``, e.g. the code before the fix, for a comparison); its
memory is read from ``/proc/PID/status`` (VmRSS; VmHWM, reset through ``clear_refs``, for the
peak; plus VmRSS polled every 10 ms). Prints one JSON object:

- ``searches``: 2,000 ``GET /api/search/{id}`` from 16 concurrent clients: errors, 5xx, p50 /
  p99 ms, RSS before / after.
- ``uploads``: 8 concurrent uploads of a 7000x7000 PNG: status codes, peak RSS and RSS after
  the burst, relative to the idle RSS just before it.
- ``cross_origin``: the status of an upload with ``Origin: http://evil.example``.
- ``attacks`` (issue 21; ``--attacks none`` skips them), each while 4 clients keep searching by
  id (``searches_during``: their p50 / p99 ms and errors) and with the peak RSS of the server
  *and its decoder processes* above their idle RSS just before:

  - ``scan_bombs``: 20 concurrent uploads of a 20,000-scan progressive JPEG (each refused
    within ``seconds``);
  - ``two_slow_decodes``: two uploads that decode slowly (under the scan limit) while 6 normal
    uploads follow: their statuses (no 503);
  - ``stalled_uploads``: 40 uploads that declare 20 MiB, send all but the last byte and stall:
    statuses, and the seconds until the server closed each connection;
  - ``big_uploads``: 30 concurrent 20 MiB PNG uploads;
  - ``half_open``: 2,000 connections that send half their headers: seconds until the server
    closed them all.

Goals (issue 12): uploads peak <= idle + 600 MB, after-burst <= idle + 100 MB, no 5xx in the
searches. Goals (issue 21), during each attack: searches p99 <= 1 s, peak <= idle + 600 MB, no
503 for the normal uploads beside two attacking ones, a scan bomb refused within 1 s, stalled
connections closed within 30 s. Only 127.0.0.1 is contacted; every request has a timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tinyrun  # noqa: E402
from helpers import scan_bomb_jpeg  # noqa: E402  (tests/, put on the path by tinyrun)

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def build_run(root: Path) -> Path:
    """The tests' tiny web run (``helpers.trained_web_run``), built outside pytest."""
    return tinyrun.build_run(root, classes=6, per_class=20, ood_classes=2,
                             model={"conv_widths": [4] * 5, "fc_width": 16},
                             training={"max_epochs": 2, "batch_size": 16, "lr": 1e-2})


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mb(pid: int) -> float:
    return round(status_kb(pid, "VmRSS") / 1024, 1)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the server's fork server and decoder processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_rss_kb(pids: list[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, KeyError):
            total += status_kb(p, "VmRSS")
    return total


class Peak:
    """The server's peak RSS over a phase: VmHWM (reset first) and 10 ms polling."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.polled = 0
        self._stop = threading.Event()
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            self.polled = max(self.polled, status_kb(self.pid, "VmRSS"))

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        return {"peak_polled_mb": round(self.polled / 1024, 1),
                "peak_hwm_mb": round(status_kb(self.pid, "VmHWM") / 1024, 1)
                if self.hwm_reset else None}


def start_server(run: Path, src: Path, log: Path, settings: list[str] | None = None
                 ) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.Popen([sys.executable, "-m", "neuralcodes", "serve", str(run), "--port",
                             str(port), "--device", "cpu",
                             *[a for kv in settings or [] for a in ("--set", kv)]],
                            env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/api/info", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start within 300 s")


def searches(url: str, pid: int, n: int, clients: int) -> dict[str, Any]:
    size = httpx.get(f"{url}/api/info", timeout=10).json()["gallery_size"]
    before = rss_mb(pid)
    local = threading.local()

    def one(i: int) -> tuple[int, float]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=30)
        t0 = time.perf_counter()
        try:
            code = local.client.get(f"{url}/api/search/{i % size}", params={"k": 5}).status_code
        except httpx.HTTPError:
            code = 0
        return code, (time.perf_counter() - t0) * 1000

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    ms = np.array([r[1] for r in results])
    codes = [r[0] for r in results]
    return {"requests": n, "clients": clients, "errors": sum(c != 200 for c in codes),
            "5xx": sum(c >= 500 for c in codes), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "requests_per_s": round(n / wall, 1), "rss_before_mb": before,
            "rss_after_mb": rss_mb(pid)}


def big_png(side: int) -> bytes:
    """A ``side`` x ``side`` RGB gradient PNG (~1 MB: small file, huge image)."""
    yy, xx = np.mgrid[0:side, 0:side]
    arr = np.stack([xx * 255 // side, yy * 255 // side, (xx + yy) * 255 // (2 * side)],
                   -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def uploads(url: str, pid: int, data: bytes, n: int, settle_s: float) -> dict[str, Any]:
    time.sleep(1)
    idle = rss_mb(pid)
    peak = Peak(pid)

    def one(_: int) -> tuple[int, float, str]:
        t0 = time.perf_counter()
        try:
            r = httpx.post(f"{url}/api/search", files={"file": ("big.png", data, "image/png")},
                           timeout=120)
            code, detail = r.status_code, "" if r.status_code == 200 else r.text[:200]
        except httpx.HTTPError as e:
            code, detail = 0, type(e).__name__
        return code, round(time.perf_counter() - t0, 2), detail

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    peaks = peak.stop()
    time.sleep(settle_s)
    after = rss_mb(pid)
    top = max(v for v in peaks.values() if v is not None)
    return {"uploads": n, "png_bytes": len(data), "statuses": [r[0] for r in results],
            "seconds": [r[1] for r in results],
            "details": sorted({r[2] for r in results if r[2]}), "idle_mb": idle, **peaks,
            "peak_above_idle_mb": round(top - idle, 1), "after_burst_mb": after,
            "after_above_idle_mb": round(after - idle, 1),
            "goal_peak_ok": top - idle <= 600, "goal_after_ok": after - idle <= 100}


# ----------------------------------------------------------------------------- attacks (issue 21)


class TreePeak:
    """Peak RSS of the server and its descendants (polled every 20 ms; the process list is
    refreshed every 0.5 s)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        pids, refreshed = descendants(self.pid), time.monotonic()
        while not self._stop.wait(0.02):
            if time.monotonic() - refreshed > 0.5:
                pids, refreshed = descendants(self.pid), time.monotonic()
            self.peak = max(self.peak, tree_rss_kb(pids))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak / 1024, 1)


SEARCH_CLIENT = """
import json, sys, threading, time
import httpx
url, clients = sys.argv[1], int(sys.argv[2])
ms, codes, stop = [], [], threading.Event()
def run(seed):
    with httpx.Client(timeout=30) as client:
        i = seed
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                code = client.get(f"{url}/api/search/{i % 40}", params={"k": 5}).status_code
            except httpx.HTTPError:
                code = 0
            ms.append((time.perf_counter() - t0) * 1000)
            codes.append(code)
            i += 7
            time.sleep(0.02)
threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
sys.stdin.read()
stop.set()
for t in threads:
    t.join()
print(json.dumps({"ms": ms, "codes": codes}))
"""


class Searching:
    """``clients`` threads searching by id until stopped: the latencies of normal use. They run
    in a process of their own, so that the attacking threads here do not slow them down."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SEARCH_CLIENT, url, str(clients)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def stop(self) -> dict[str, Any]:
        out, _ = self.proc.communicate("", timeout=120)
        got = json.loads(out)
        ms = np.array(got["ms"] or [0.0])
        return {"requests": len(got["ms"]), "errors": sum(c != 200 for c in got["codes"]),
                "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1),
                "max_ms": round(float(ms.max()), 1)}


UPLOADS = httpx.Client(limits=httpx.Limits(max_connections=64, max_keepalive_connections=0))


def post_upload(url: str, data: bytes, name: str, timeout: float = 120) -> tuple[int, float]:
    t0 = time.perf_counter()
    try:
        code = UPLOADS.post(f"{url}/api/search", files={"file": (name, data)},
                            timeout=timeout).status_code
    except httpx.HTTPError:
        code = 0
    return code, round(time.perf_counter() - t0, 2)


def during_attack(url: str, pid: int, attack: Any) -> dict[str, Any]:
    """Run ``attack()`` while normal searches go on; the peak memory of the server's tree."""
    time.sleep(2)
    idle = round(tree_rss_kb(descendants(pid)) / 1024, 1)
    peak = TreePeak(pid)
    search = Searching(url)
    time.sleep(1.5)  # the search process is up and searching
    t0 = time.perf_counter()
    out = attack()
    wall = round(time.perf_counter() - t0, 1)
    top = peak.stop()
    normal = search.stop()
    return {**out, "attack_s": wall, "idle_tree_mb": idle, "peak_tree_mb": top,
            "peak_above_idle_mb": round(top - idle, 1), "searches_during": normal,
            "goal_p99_ok": normal["p99_ms"] <= 1000 and normal["errors"] == 0,
            "goal_peak_ok": top - idle <= 600}


def scan_bombs(url: str, n: int = 20) -> dict[str, Any]:
    bomb = scan_bomb_jpeg(20_000, side=2048)
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: post_upload(url, bomb, f"bomb{i}.jpg"), range(n)))
    seconds = [r[1] for r in results]
    return {"uploads": n, "bytes": len(bomb), "statuses": sorted({r[0] for r in results}),
            "max_seconds": max(seconds), "goal_refused_within_1s": max(seconds) <= 1.0}


def two_slow_decodes(url: str, normal: bytes) -> dict[str, Any]:
    slow = scan_bomb_jpeg(290, side=4096)  # under the default scan limit (300)
    with ThreadPoolExecutor(2) as pool:
        attackers = [pool.submit(post_upload, url, slow, "slow.jpg") for _ in range(2)]
        time.sleep(0.3)
        normals = [post_upload(url, normal, "normal.png") for _ in range(6)]
        hits = [a.result() for a in attackers]
    return {"attackers": hits, "normal_uploads": normals,
            "goal_no_503": all(code != 503 for code, _ in normals)}


def _multipart_head(boundary: str, name: str) -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n").encode()


def stalled_uploads(url: str, n: int = 40, size: int = 20 * MB - 4096) -> dict[str, Any]:
    """``n`` uploads that send all but the last bytes of their body, then stall."""
    host, port = url.removeprefix("http://").split(":")
    boundary = "stall0boundary"
    body = _multipart_head(boundary, "stall.png") + b"\x00" * size
    tail = f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/"
            f"form-data; boundary={boundary}\r\nContent-Length: {len(body) + len(tail)}"
            "\r\n\r\n").encode()

    def one(_: int) -> tuple[str, float]:
        s = socket.create_connection((host, int(port)))
        s.settimeout(120)
        with contextlib.suppress(OSError):  # OSError: answered (503) and closed early
            s.sendall(head + body[:-1])  # the last byte never comes
        t0 = time.perf_counter()
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except OSError:
            pass
        s.close()
        status = got.split(b"\r\n", 1)[0].decode(errors="replace")[9:12] or "closed"
        return status, round(time.perf_counter() - t0, 1)

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    closed = [r[1] for r in results]
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return {"uploads": n, "declared_bytes": len(body) + len(tail), "statuses": statuses,
            "max_seconds_to_close": max(closed),
            "goal_closed_within_30s": max(closed) <= 30}


def noise_png(target: int) -> bytes:
    """An RGB noise PNG just under ``target`` bytes (noise does not compress)."""
    side = int((target / 3.02) ** 0.5)
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8)).save(
        buf, "PNG", compress_level=1)
    return buf.getvalue()


def big_uploads(url: str, n: int = 30) -> dict[str, Any]:
    data = noise_png(20 * MB - 64 * 1024)
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda i: post_upload(url, data, f"big{i}.png", 300), range(n)))
    statuses: dict[str, int] = {}
    for code, _ in results:
        statuses[str(code)] = statuses.get(str(code), 0) + 1
    return {"uploads": n, "bytes": len(data), "statuses": statuses,
            "max_seconds": max(r[1] for r in results)}


def half_open(url: str, n: int = 2000) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: ")
        s.setblocking(False)
        socks.append(s)
    t0 = time.perf_counter()
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    open_, last = n, 0.0
    while open_ and time.perf_counter() - t0 < 120:
        for key, _ in sel.select(timeout=1):
            try:
                data = key.fileobj.recv(4096)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
                open_ -= 1
                last = time.perf_counter() - t0
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return {"connections": n, "still_open_after_120s": open_,
            "seconds_until_all_closed": round(last, 1) if not open_ else None,
            "goal_closed_within_30s": not open_ and last <= 30}


def attacks(url: str, pid: int, which: list[str]) -> dict[str, Any]:
    normal = big_png(640)
    table = {"scan_bombs": lambda: scan_bombs(url),
             "two_slow_decodes": lambda: two_slow_decodes(url, normal),
             "stalled_uploads": lambda: stalled_uploads(url),
             "big_uploads": lambda: big_uploads(url),
             "half_open": lambda: half_open(url)}
    return {name: during_attack(url, pid, table[name]) for name in which}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train a tiny one)")
    parser.add_argument("--src", type=Path, default=ROOT / "src",
                        help="the neuralcodes source tree the server runs (default: this one)")
    parser.add_argument("--searches", type=int, default=2000, help="0: skip this phase")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--uploads", type=int, default=8, help="0: skip this phase")
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before after-burst")
    parser.add_argument("--attacks", default="scan_bombs,two_slow_decodes,stalled_uploads,"
                        "big_uploads,half_open", help="comma-separated, or none")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting for the server (repeatable), e.g. serve.inflight_mb=128")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 2,000 sockets on both ends
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    out: dict[str, Any] = {"src": str(args.src), "settings": args.set, "cpus": os.cpu_count(),
                           "cpu": cpu_name(),
                           "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or build_run(Path(tmp))
        out["run_kernels"] = tinyrun.run_kernels(run)
        data = big_png(args.side) if args.uploads else b""
        proc, url = start_server(run, args.src, Path(tmp) / "server.log", args.set)
        try:
            out["idle_rss_mb"] = rss_mb(proc.pid)
            if args.searches:
                out["searches"] = searches(url, proc.pid, args.searches, args.clients)
            if args.uploads:
                out["uploads"] = uploads(url, proc.pid, data, args.uploads, args.settle)
            r = httpx.post(f"{url}/api/search", headers={"Origin": "http://evil.example"},
                           files={"file": ("x.png", big_png(64), "image/png")}, timeout=30)
            out["cross_origin_status"] = r.status_code
            which = [a for a in args.attacks.split(",") if a and a != "none"]
            out["attacks"] = attacks(url, proc.pid, which)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
