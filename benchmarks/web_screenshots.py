"""Screenshots of every view of the web app (``neuralcodes serve``) at desktop and phone size.

Usage: ``python benchmarks/web_screenshots.py [--run RUN] [--out DIR]``. Without ``--run`` it
builds a small generated run first (a tiny ConvNet, 8 in-domain and 4 ood generated classes,
120 ood images, about a minute on a CPU). Drives Debian's Chromium (``/usr/bin/chromium``)
through Playwright, at 1366x900 and 390x844, and writes ``<view>-<size>.png`` (full page) into
``--out`` (default: ``test-artifacts/screenshots``) for a person to review: every view, the
states around them (``state-*``: loading, server down, a corrected address, a page past the end,
a busy server and an unreadable file on upload), and ``report.html`` as the app serves it and
as opened from disk (``report-app-*``, ``report-disk-*``). Prints the list of files as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tinyrun  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SIZES = {"desktop": (1366, 900), "phone": (390, 844)}


def build_run(root: Path) -> Path:
    """A small generated run: 12 classes x 30 images, 4 of them out-of-domain (120 images),
    with its retrieval study and report."""
    from neuralcodes.report import write_report
    from neuralcodes.retrieval import run_study
    from neuralcodes.runs import TrainedRun

    run = tinyrun.build_run(root, classes=12, per_class=30, ood_classes=4,
                            model={"conv_widths": [8] * 5, "fc_width": 32, "batch_norm": True},
                            training={"max_epochs": 6, "batch_size": 16, "lr": 3e-3})
    run_study(TrainedRun.open(run, device="cpu", progress=False))
    write_report(run)
    return run


def serve(run: Path) -> tuple[Any, str]:
    import uvicorn

    from neuralcodes.web import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(run, device="cpu"), host="127.0.0.1",
                                           port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    return server, f"http://{host}:{port}/"


def photo() -> bytes:
    """A generated 'photo' with a transparent corner, to show an upload's notes."""
    rng = np.random.default_rng(3)
    arr = np.zeros((90, 120, 4), np.uint8)
    arr[..., :3] = rng.integers(0, 256, (90, 120, 3))
    arr[..., 1] //= 3
    arr[..., 3] = 255
    arr[:30, :40, 3] = 0
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _answer(answer: dict[str, Any]) -> Any:
    """A route handler that answers with ``answer`` (Playwright passes a handler that takes two
    arguments the request too, so no default argument here)."""
    return lambda route: route.fulfill(**answer)


def shoot_states(page: Any, base: str, out: Path, size: str) -> list[str]:
    """The states a user meets besides the views: loading, the server down, a corrected
    address, a page past the end, a busy server and an unreadable file on upload."""
    written = []

    def snap(name: str) -> None:
        path = out / f"{name}-{size}.png"
        page.screenshot(path=str(path), full_page=True)
        written.append(str(path))

    held: list[Any] = []
    page.route("**/api/info", lambda route: held.append(route))
    page.goto("about:blank")
    page.goto(base + "#/gallery")
    page.locator("#app-status").wait_for()
    snap("state-loading")
    held[0].abort()
    page.unroute("**/api/info")
    page.route("**/api/info", lambda route: route.abort())  # its retries fail too
    page.locator("#error [data-testid=retry]").wait_for()
    snap("state-server-down")
    page.unroute("**/api/info")
    for name, hash_ in (("state-address-corrected", "#/query/3?k=999&layer=9"),
                        ("state-gallery-past-end", "#/gallery?page=99")):
        page.goto("about:blank")
        page.goto(base + hash_)
        page.wait_for_load_state("networkidle")
        page.wait_for_function("() => !document.querySelector('.busy')")
        snap(name)
    for name, answer in (
            ("state-upload-busy", {"status": 503, "headers": {"Retry-After": "9"}, "json": {
                "detail": "the server is busy decoding other images; retry in 9 s"}}),
            ("state-upload-unreadable", {"status": 400, "json": {
                "detail": "photo.png is not a readable image: corrupt header (Truncated File "
                          "Read)"}})):
        page.route("**/api/search", _answer(answer))
        page.goto("about:blank")
        page.goto(base + "#/upload")
        page.wait_for_function("() => document.querySelector('#run-name').textContent")
        page.set_input_files("#upload-file", files=[{
            "name": "photo.png", "mimeType": "image/png", "buffer": photo()}])
        page.locator("#error").wait_for()
        snap(name)
        page.unroute("**/api/search")
    return written


def shoot_report(browser: Any, base: str, run: Path, out: Path) -> list[str]:
    """report.html as the app serves it (under its CSP) and as opened from disk."""
    written = []
    for size, (w, h) in SIZES.items():
        page = browser.new_page(viewport={"width": w, "height": h})
        for name, url in (("report-app", base + "report.html"),
                          ("report-disk", (run / "report.html").resolve().as_uri())):
            page.goto(url)
            page.wait_for_load_state("load")
            path = out / f"{name}-{size}.png"
            page.screenshot(path=str(path), full_page=True)
            written.append(str(path))
        page.close()
    return written


def shoot(base: str, out: Path, run: Path) -> list[str]:
    from playwright.sync_api import sync_playwright

    views = [("gallery", "#/gallery"), ("gallery-class", "#/gallery?class=8"),
             ("query", "#/query/3"), ("query-layer6", "#/query/3?layer=6&k=10"),
             ("upload-empty", "#/upload"), ("results", "#/results"), ("api", "#/api"),
             ("notfound", "#/query/99999")]
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        for size, (w, h) in SIZES.items():
            page = browser.new_page(viewport={"width": w, "height": h})
            for name, hash_ in views:
                page.goto("about:blank")  # a full load each time, not a hash change
                page.goto(base + hash_)
                page.wait_for_load_state("networkidle")
                page.wait_for_function("() => !document.querySelector('.busy')")
                path = out / f"{name}-{size}.png"
                page.screenshot(path=str(path), full_page=True)
                written.append(str(path))
            page.goto(base + "#/upload")
            page.set_input_files("#upload-file", files=[{
                "name": "photo.png", "mimeType": "image/png", "buffer": photo()}])
            page.wait_for_url("**#/upload/*")
            page.locator("#upload-results [data-testid=hit]").first.wait_for()
            page.wait_for_load_state("networkidle")
            path = out / f"upload-result-{size}.png"
            page.screenshot(path=str(path), full_page=True)
            written.append(str(path))
            written += shoot_states(page, base, out, size)
            page.goto(base + "docs")
            page.wait_for_load_state("networkidle")
            path = out / f"docs-{size}.png"
            page.screenshot(path=str(path))
            written.append(str(path))
            page.close()
        written += shoot_report(browser, base, run, out)
        browser.close()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: build a generated one)")
    parser.add_argument("--out", type=Path, default=ROOT / "test-artifacts" / "screenshots")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} not found: apt-get install chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or build_run(Path(tmp))
        server, base = serve(run)
        try:
            files = shoot(base, args.out, run)
        finally:
            server.should_exit = True
    print(json.dumps({"screenshots": files}, indent=2))


if __name__ == "__main__":
    main()
