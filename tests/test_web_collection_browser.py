"""Your photos in a real browser (Playwright, Debian's Chromium; skipped without it): the gallery
of the served index, its folder and text filters, click-to-search, the original and the folder
of a photo, the same actions on the index hits of an upload, and axe, at desktop and phone
width. Screenshots go to ``test-artifacts/`` (ignored)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from helpers import chromium, serving, settle
from neuralcodes.runs import TrainedRun

expect.set_options(timeout=15_000)  # a loaded CI machine renders slowly

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SIZES = {"desktop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}
PHOTOS = ["beach.png", "dog.png", "trip/hill.png", "trip/lake.png", "trip/copy of dog.png"]



def _pixels(name: str) -> np.ndarray:
    """Noise with one channel pushed up, per photo (the tiny net tells these apart); the
    copy of the dog has the dog's pixels."""
    kind = next(k for k in ("dog", "beach", "hill", "lake") if k in name)
    arr = np.random.default_rng(len(kind)).integers(0, 256, (80, 80, 3)).astype(np.uint8)
    if kind == "lake":
        return arr // 4
    arr[..., ("dog", "hill", "beach").index(kind)] = 250
    return arr


@pytest.fixture(scope="module")
def base(web_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from neuralcodes.retrieval import build_index
    from neuralcodes.web import create_app

    root = tmp_path_factory.mktemp("browser-photos")
    for name in PHOTOS:
        (root / name).parent.mkdir(exist_ok=True)
        Image.fromarray(_pixels(name)).save(root / name)
    build_index(root, TrainedRun.open(web_run, device="cpu", progress=False), name="browser")
    with serving(create_app(web_run, "browser", device="cpu")) as (host, port):
        yield f"http://{host}:{port}/"


@pytest.fixture(scope="module")
def browser(base: str) -> Iterator[object]:
    with chromium() as b:
        yield b


def _fits(pg: object) -> None:
    """No sideways scrolling; the main navigation on one row."""
    assert pg.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
    tops = pg.locator("nav[aria-label=Main] a").evaluate_all(
        "a => a.map(x => Math.round(x.getBoundingClientRect().top))")
    assert len(set(tops)) == 1, tops


def _serious(pg: object) -> list[object]:
    axe = pytest.importorskip("axe_playwright_python.sync_playwright").Axe()
    return [(v["id"], [n["target"] for n in v["nodes"]][:3])
            for v in axe.run(pg).response["violations"] if v["impact"] in ("serious", "critical")]


@pytest.mark.parametrize("size", SIZES)
def test_browse_your_photos_filter_and_click_to_search(browser, base, size):
    pg = browser.new_page(viewport=SIZES[size])
    pg.set_default_timeout(15_000)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.on("console", lambda m: m.type == "error" and problems.append(m.text))
    pg.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}"))
    try:
        pg.goto(base + "#/gallery")
        settle(pg)
        pg.get_by_role("link", name="Your photos").click()
        settle(pg)
        grid = pg.get_by_test_id("collection").locator("a.thumb")
        assert grid.count() == 5 and pg.get_by_text("0 folders").count() == 0
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"collection-{size}.png"), full_page=True)
        _fits(pg)
        assert _serious(pg) == []
        pg.select_option("#collection-folder", "trip")
        pg.wait_for_url("**folder=trip*")
        settle(pg)
        expect(grid).to_have_count(3)
        pg.fill("#collection-q", "LAKE")
        pg.press("#collection-q", "Enter")
        pg.wait_for_url("**q=LAKE*")
        settle(pg)
        expect(grid).to_have_count(1)
        expect(grid.nth(0)).to_have_attribute("title", "trip/lake.png")
        pg.goto(base + "#/collection?q=dog")
        settle(pg)
        expect(grid).to_have_count(2)
        grid.filter(has_text="dog.png").first.click()  # the top folder's dog.png
        pg.wait_for_url("**#/item/*")
        settle(pg)
        me = pg.url.rsplit("/", 1)[1].split("?")[0]
        expect(pg.locator("#item-caption")).to_have_text("dog.png")
        assert pg.get_by_test_id("original").get_attribute("href") == f"api/original/{me}"
        first = pg.locator("[data-testid=item-results] .layer").first.get_by_test_id("hit")
        assert first.nth(0).get_by_test_id("same").inner_text() == "same file"
        assert first.nth(1).get_by_test_id("same").inner_text() == "identical code"
        assert "trip/" in first.nth(1).inner_text()
        assert "centred by the mean training code" in pg.locator("#item-about").inner_text()
        pg.screenshot(path=str(ARTIFACTS / f"collection-item-{size}.png"), full_page=True)
        _fits(pg)
        assert _serious(pg) == []
        assert pg.request.get(base + f"api/original/{me}").headers["content-type"] \
            == "image/png"
        first.nth(1).locator("a").first.click()  # click-to-search from a hit
        pg.wait_for_function(f"() => /#\\/item\\/(?!{me}\\b)/.test(location.hash)")
        settle(pg)
        expect(pg.locator("#item-caption")).to_have_text("trip/copy of dog.png")
        pg.get_by_test_id("folder").click()
        pg.wait_for_url("**#/collection?folder=trip")
        settle(pg)
        expect(grid).to_have_count(3)
        expect(pg.locator("#collection-folder")).to_have_value("trip")
        pg.goto(base + f"#/item/{me}")  # dog.png, in the top folder
        settle(pg)
        pg.get_by_test_id("folder").click()
        pg.wait_for_url("**#/collection?folder=.")
        settle(pg)
        expect(grid).to_have_count(2)
        expect(pg.locator("#collection-folder")).to_have_value(".")
        assert not problems, problems
    finally:
        pg.close()


@pytest.mark.parametrize("size", SIZES)
def test_upload_hits_in_your_photos_lead_to_the_photo_and_its_original(browser, base, size):
    pg = browser.new_page(viewport=SIZES[size])
    try:
        pg.goto(base + "#/upload?db=index")
        settle(pg)
        buf = io.BytesIO()
        Image.fromarray(_pixels("dog.png")).save(buf, format="PNG")
        pg.set_input_files("#upload-file", files=[{"name": "q.png", "mimeType": "image/png",
                                                   "buffer": buf.getvalue()}])
        pg.wait_for_url("**#/upload/*")
        settle(pg)
        hit = pg.locator("[data-testid=upload-results] [data-testid=hit]").first
        assert hit.get_by_test_id("same").inner_text() == "identical code"
        assert hit.get_by_test_id("hit-original").get_attribute("href").startswith(
            "api/original/")
        assert "Similarity: cosine similarity of the codes centred" in \
            pg.locator("#upload-about").inner_text()
        pg.screenshot(path=str(ARTIFACTS / f"collection-upload-{size}.png"), full_page=True)
        _fits(pg)
        hit.locator("a").first.click()
        pg.wait_for_url("**#/item/*")
        settle(pg)
        assert pg.locator("#item-caption").inner_text() in ("dog.png", "trip/copy of dog.png")
    finally:
        pg.close()
