"""End to end in a real browser: Playwright drives Debian's Chromium against ``neuralcodes serve``.

Playwright cannot download its own browser here, so the system Chromium is used
(``apt-get install chromium``; ``.ci/run`` installs it). The test skips when it is absent.
Screenshots go to ``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers import trained_web_run

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_source: Path, tiny_cache_root: Path,
           tiny_cache: Path) -> Iterator[str]:
    """``neuralcodes serve``'s app under uvicorn in a thread, on a free localhost port."""
    import uvicorn

    from neuralcodes.web import create_app

    run = trained_web_run(tmp_path_factory, tiny_source, tiny_cache_root)
    app = create_app(run, device="cpu")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=_free_port(),
                                        log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the web server did not start")
        time.sleep(0.05)
    host, port = srv.servers[0].sockets[0].getsockname()[:2]
    yield f"http://{host}:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.set_default_timeout(15_000)
            yield pg
        finally:
            browser.close()


def _png(seed: int, size: tuple[int, int] = (123, 77)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_gallery_click_shows_three_layers_of_marked_results(page, server):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    thumbs = page.locator("#gallery button")
    thumbs.nth(39).wait_for()
    assert thumbs.count() == 40
    assert page.locator("#gallery img").first.evaluate("img => img.complete && "
                                                       "img.naturalWidth === 64")
    thumbs.nth(2).click()
    page.wait_for_url("**#/query/2")
    hits = page.locator("[data-testid=query-results] [data-testid=hit]")
    hits.nth(14).wait_for()
    assert hits.count() == 3 * 5
    expected = httpx.get(f"{server}api/search/2").json()
    layers = page.locator("[data-testid=query-results] .layer")
    assert layers.count() == 3
    for li, layer in enumerate(expected["layers"]):
        box = layers.nth(li)
        assert box.locator("h3").inner_text().startswith(f"Layer {layer['layer']}")
        assert box.get_by_test_id("ap").inner_text() == f"AP {layer['ap']:.3f}"
        for hi, hit in enumerate(layer["hits"]):
            card = box.get_by_test_id("hit").nth(hi)
            mark = "✓" if hit["same_class"] else "✗"
            assert card.get_by_test_id("mark").inner_text() == mark
            assert card.get_attribute("class") == ("hit same" if hit["same_class"] else "hit diff")
            assert f"{hit['score']:.3f}" in card.inner_text()
            assert card.locator("img").get_attribute("src") == hit["url"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web.png"), full_page=True)
    # 20 results among 39 others of which 19 share the query's class: both marks must show
    page.select_option("#query-k", "20")
    hits.nth(59).wait_for()
    assert hits.count() == 3 * 20
    for box in layers.all():
        assert box.locator(".hit.same .mark").all_inner_texts().count("✓") >= 1
        assert set(box.locator(".hit.diff .mark").all_inner_texts()) == {"✗"}
    for cls, colour in (("same", "rgb(26, 127, 55)"), ("diff", "rgb(207, 34, 46)")):
        frame = page.locator(f"[data-testid=query-results] .hit.{cls}").first
        assert frame.evaluate("e => getComputedStyle(e).borderTopColor") == colour
    assert not errors


def test_upload_shows_results_and_bad_files_show_the_message(page, server):
    page.goto(f"{server}#/upload")
    page.locator("#upload-database option").first.wait_for(state="attached")
    page.set_input_files("#upload-file", files=[{"name": "generated.png",
                                                 "mimeType": "image/png", "buffer": _png(1)}])
    page.click("#upload-submit")
    hits = page.locator("[data-testid=upload-results] [data-testid=hit]")
    hits.nth(14).wait_for()
    assert hits.count() == 3 * 5
    assert page.locator("#upload-caption").inner_text().startswith("generated.png (123×77 PNG)")
    assert page.locator("#upload-preview").get_attribute("src").startswith("data:image/png")
    assert page.locator("#error").is_hidden()
    page.screenshot(path=str(ARTIFACTS / "web-upload.png"), full_page=True)

    page.set_input_files("#upload-file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                 "buffer": b"not an image"}])
    page.click("#upload-submit")
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert error.inner_text() == "not a JPEG, PNG or WebP image"


def test_results_page_shows_the_tables_and_the_curves(page, server):
    page.goto(f"{server}#/results")
    rows = page.locator("[data-testid=eval-table] tbody tr")
    rows.nth(2).wait_for()
    assert [rows.nth(i).locator("td").first.inner_text() for i in range(3)] == \
        ["train", "val", "test"]
    assert page.locator("[data-testid=map-table] tbody tr").count() == 3
    curves = page.locator("#curves img")
    curves.wait_for()
    page.wait_for_function("() => document.querySelector('#curves img').naturalWidth > 0")
    page.screenshot(path=str(ARTIFACTS / "web-results.png"), full_page=True)
