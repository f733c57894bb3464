"""Load test of ``neuralcodes serve`` as a real server process (issue 12).

Usage: ``PYTHONPATH=src python benchmarks/web_load.py [--run RUN] [--src SRC]``. Without
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

Goals (issue 12): uploads peak <= idle + 600 MB, after-burst <= idle + 100 MB, no 5xx in the
searches. Only 127.0.0.1 is contacted; every request has a timeout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
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


def start_server(run: Path, src: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.Popen([sys.executable, "-m", "neuralcodes", "serve", str(run), "--port",
                             str(port), "--device", "cpu"], env=env, stdout=log.open("w"),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: train a tiny one)")
    parser.add_argument("--src", type=Path, default=ROOT / "src",
                        help="the neuralcodes source tree the server runs (default: this one)")
    parser.add_argument("--searches", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--uploads", type=int, default=8)
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before after-burst")
    args = parser.parse_args()
    out: dict[str, Any] = {"src": str(args.src), "cpus": os.cpu_count(),
                           "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or build_run(Path(tmp))
        out["run_kernels"] = tinyrun.run_kernels(run)
        data = big_png(args.side)
        proc, url = start_server(run, args.src, Path(tmp) / "server.log")
        try:
            out["idle_rss_mb"] = rss_mb(proc.pid)
            out["searches"] = searches(url, proc.pid, args.searches, args.clients)
            out["uploads"] = uploads(url, proc.pid, data, args.uploads, args.settle)
            r = httpx.post(f"{url}/api/search", headers={"Origin": "http://evil.example"},
                           files={"file": ("x.png", big_png(64), "image/png")}, timeout=30)
            out["cross_origin_status"] = r.status_code
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
