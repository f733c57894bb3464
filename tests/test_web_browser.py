"""End to end in a real browser: Playwright drives Debian's Chromium against ``neuralcodes serve``.

Playwright cannot download its own browser here, so the system Chromium is used
(``apt-get install chromium``; ``.ci/run`` installs it). The tests skip when it is absent. One
server and one browser serve the whole module; each test gets a fresh page, and fails on any
page error, console error or failed request that normal use would not cause. The numbers in
the test names are the points of issue 13. Screenshots go to ``test-artifacts/`` (ignored).
"""

from __future__ import annotations

import base64
import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers import settle
from neuralcodes.runs import RunDir

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
VIEWS = ["#/gallery", "#/query/2", "#/upload", "#/results", "#/api", "#/nowhere"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(web_run: Path) -> Iterator[str]:
    """``neuralcodes serve``'s app under uvicorn in a thread, on a free localhost port."""
    import uvicorn

    from neuralcodes.web import create_app

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    app = create_app(web_run, device="cpu")
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
def browser(server: str) -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()



class Page:
    """A fresh page that records page errors, console errors and failed requests."""

    def __init__(self, browser: object, base: str, viewport: dict[str, int]) -> None:
        self.pg = browser.new_page(viewport=viewport)
        self.pg.set_default_timeout(15_000)
        self.base = base
        self.problems: list[str] = []
        self.expected_status: set[int] = set()
        self.requests: list[str] = []
        self.pg.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.pg.on("console", lambda m: m.type == "error" and not self._expected(m.text)
                   and self.problems.append(f"console: {m.text}"))
        self.pg.on("requestfailed", lambda r: "ERR_ABORTED" not in (r.failure or "")
                   and self.problems.append(f"failed: {r.url} {r.failure}"))
        self.pg.on("response", lambda r: r.status >= 400 and r.status not in self.expected_status
                   and self.problems.append(f"HTTP {r.status}: {r.url}"))
        self.pg.on("request", lambda r: self.requests.append(f"{r.method} {r.url}"))

    def _expected(self, text: str) -> bool:
        return any(f"status of {s}" in text for s in self.expected_status)

    def open(self, hash_: str = "") -> None:
        self.pg.goto("about:blank")
        self.pg.goto(self.base + hash_)
        self.settle()

    def go(self, hash_: str) -> None:
        self.pg.evaluate("h => { location.hash = h; }", hash_)
        self.settle()

    def settle(self) -> None:
        settle(self.pg)


def _open_page(browser: object, server: str, size: object) -> Iterator[Page]:
    """A page at ``size``; after the test, no console error or failed request may remain."""
    p = Page(browser, server, size)
    yield p
    p.pg.close()
    assert not p.problems, p.problems


@pytest.fixture
def page(browser: object, server: str) -> Iterator[Page]:
    yield from _open_page(browser, server, DESKTOP)


@pytest.fixture
def phone(browser: object, server: str) -> Iterator[Page]:
    yield from _open_page(browser, server, PHONE)


def _png(seed: int = 1, size: tuple[int, int] = (123, 77), alpha: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 4 if alpha else 3), dtype=np.uint8)
    if alpha:
        arr[..., 3] = 255
        arr[: size[1] // 2, :, 3] = 0  # the top half transparent
        arr[: size[1] // 2, :, :3] = 0
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _file(name: str, data: bytes, mime: str = "image/png") -> list[dict]:
    return [{"name": name, "mimeType": mime, "buffer": data}]


def _hits(p: Page, view: str = "query") -> object:
    return p.pg.locator(f"[data-testid={view}-results] [data-testid=hit]")


# --------------------------------------------------------------------------- the core flows


def test_gallery_click_shows_three_layers_of_marked_results(page, server):
    page.open()
    thumbs = page.pg.locator("#gallery a")
    assert thumbs.count() == 40
    # the thumbnail loads after the page settles: wait for it, then check what arrived
    page.pg.wait_for_function("() => { const img = document.querySelector('#gallery img');"
                              " return img !== null && img.complete; }")
    assert page.pg.locator("#gallery img").first.evaluate("img => img.naturalWidth === 64")
    thumbs.nth(2).click()
    page.pg.wait_for_url("**#/query/2")
    page.settle()
    hits = _hits(page)
    assert hits.count() == 3 * 5
    expected = httpx.get(f"{server}api/search/2").json()
    layers = page.pg.locator("[data-testid=query-results] .layer")
    assert layers.count() == 3
    for li, layer in enumerate(expected["layers"]):
        box = layers.nth(li)
        assert box.locator("h3").inner_text() == f"Layer {layer['layer']}"
        assert box.get_by_test_id("ap").inner_text() == f"AP {100 * layer['ap']:.1f}%"
        for hi, hit in enumerate(layer["hits"]):
            card = box.get_by_test_id("hit").nth(hi)
            mark = "✓" if hit["same_class"] else "✗"
            assert card.get_by_test_id("mark").inner_text() == mark
            assert card.get_attribute("class") == ("hit same" if hit["same_class"] else "hit diff")
            # the headline is the rank; the similarity reads in two decimals
            assert card.get_by_test_id("rank").text_content() == f"rank {hi + 1}"
            shown = re.fullmatch(r"similarity (-?\d\.\d\d)", card.locator(".score").inner_text())
            assert shown and float(shown.group(1)) == pytest.approx(hit["score"], abs=0.0051)
            assert card.locator("img").get_attribute("src") == hit["url"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.pg.screenshot(path=str(ARTIFACTS / "web.png"), full_page=True)
    # 20 results among 39 others of which 19 share the query's class: both marks must show
    page.pg.select_option("#query-k", "20")
    page.pg.wait_for_url("**k=20*")
    page.settle()
    assert hits.count() == 3 * 20
    for box in layers.all():
        assert box.locator(".hit.same .mark").all_inner_texts().count("✓") >= 1
        assert set(box.locator(".hit.diff .mark").all_inner_texts()) == {"✗"}
    for cls, colour in (("same", "rgb(26, 127, 55)"), ("diff", "rgb(207, 34, 46)")):
        frame = page.pg.locator(f"[data-testid=query-results] .hit.{cls} > a").first
        assert frame.evaluate("e => getComputedStyle(e).borderTopColor") == colour


def test_results_page_shows_the_tables_and_the_curves(page):
    page.open("#/results")
    rows = page.pg.locator("[data-testid=eval-table] tbody tr")
    assert [rows.nth(i).locator("th").inner_text() for i in range(3)] == ["train", "val", "test"]
    assert page.pg.locator("[data-testid=map-table] tbody tr").count() == 3
    # no report yet: the page names the command that writes it (one that exists)
    empty = " ".join(page.pg.locator("#view-results .empty").all_inner_texts())
    assert "`neuralcodes run --config RUN/config.json --out RUN` writes it" in empty
    page.pg.wait_for_function("() => document.querySelector('#curves img').naturalWidth > 0")
    page.pg.screenshot(path=str(ARTIFACTS / "web-results.png"), full_page=True)


# --------------------------------------------------------------------------- issue 13, 1-2


def test_1_empty_upload_page_shows_no_broken_image(page):
    page.open("#/upload")
    assert page.pg.locator("#upload-query").is_hidden()
    broken = page.pg.evaluate("() => [...document.images].filter(i => i.offsetParent && "
                              "(!i.complete || i.naturalWidth === 0)).length")
    assert broken == 0


def test_2_a_failed_upload_clears_the_previous_preview_and_message(page):
    page.expected_status = {415}
    page.open("#/upload")
    page.pg.set_input_files("#upload-file", files=_file("generated.png", _png()))
    page.pg.wait_for_url("**#/upload/*")
    page.settle()
    assert _hits(page, "upload").count() == 3 * 5
    assert page.pg.locator("#upload-caption").inner_text().startswith("generated.png (123×77 PNG)")
    assert page.pg.locator("#upload-preview").get_attribute("src").startswith("data:image/png")
    assert page.pg.locator("#error").is_hidden()
    page.pg.screenshot(path=str(ARTIFACTS / "web-upload.png"), full_page=True)
    page.pg.set_input_files("#upload-file", files=_file("notes.txt", b"not an image",
                                                        "text/plain"))
    error = page.pg.locator("#error")
    error.wait_for(state="visible")
    assert error.inner_text() == ("notes.txt is not a JPEG, PNG or WebP image, the formats this "
                                  "app reads. Choose an image in one of them.")
    assert error.locator("[data-testid=retry]").count() == 0  # the same file would fail again
    assert page.pg.locator("#upload-query").is_hidden()
    assert "generated.png" not in page.pg.locator("#view-upload").inner_text()
    assert _hits(page, "upload").count() == 0
    page.pg.set_input_files("#upload-file", files=_file("again.png", _png(2)))
    page.settle()
    page.pg.wait_for_function("() => document.querySelectorAll('#upload-results li').length")
    assert error.is_hidden()


# --------------------------------------------------------------------------- 3-5


def test_3_scores_read_as_rank_and_similarity_and_ap_has_its_chance_level(page, server):
    """Issue 22: the headline was a cosine of 3-6 decimals (two hits both "0.990459"); now each
    card leads with its rank, the similarity has two decimals, the exact value its tooltip."""
    page.open("#/query/5?k=20")
    expected = httpx.get(f"{server}api/search/5?k=20").json()
    for li, layer in enumerate(expected["layers"]):
        box = page.pg.locator("[data-testid=query-results] .layer").nth(li)
        ranks = [t.split()[-1] for t in box.get_by_test_id("rank").all_text_contents()]
        assert ranks == [str(i) for i in range(1, 21)]
        shown = box.locator(".score").all_inner_texts()
        assert shown == [f"similarity {h['score']:.2f}" for h in layer["hits"]]
        titles = box.locator(".score").evaluate_all("s => s.map(x => x.title)")
        assert titles == [f"cosine similarity {h['score']:.6f}" for h in layer["hits"]]
        assert box.get_by_test_id("chance").inner_text() == \
            f"chance {100 * expected['chance_ap']:.1f}%"
    about = page.pg.locator("#query-about").inner_text()
    assert "cosine similarity" in about and "chance" in about and "pre-ReLU" in about


def _hold(page: Page, pattern: str) -> list:
    held: list = []
    page.pg.route(pattern, lambda route: held.append(route))
    return held


def test_4_a_search_shows_its_loading_state_with_the_new_query(page):
    page.open("#/query/3")
    held = _hold(page, re.compile(r".*/api/search/7\?.*"))
    page.pg.evaluate("() => { location.hash = '#/query/7'; }")
    page.pg.wait_for_function("() => !document.querySelector('#query-status').hidden")
    assert "Searching" in page.pg.locator("#query-status").inner_text()
    assert page.pg.locator("#query-image").get_attribute("src") == "api/image/7"
    assert _hits(page).count() == 0  # the old results are gone, not shown under the new image
    assert page.pg.locator("#query-results").get_attribute("aria-busy") == "true"
    while not held:
        page.pg.wait_for_timeout(20)
    held[0].continue_()
    page.settle()
    assert _hits(page).count() == 15 and page.pg.locator("#query-status").is_hidden()


def test_5_only_the_latest_request_paints(page, server):
    page.open("#/query/3")
    held = _hold(page, re.compile(r".*/api/search/10\?.*"))
    page.pg.evaluate("() => { location.hash = '#/query/10'; }")
    page.pg.wait_for_timeout(200)
    page.go("#/query/11")
    for route in held:
        route.continue_()
    page.pg.wait_for_timeout(500)
    page.settle()
    assert page.pg.url.endswith("#/query/11")
    assert page.pg.locator("#query-caption").inner_text().startswith("#11 ")
    want = [h["id"] for h in httpx.get(f"{server}api/search/11").json()["layers"][0]["hits"]]
    got = page.pg.locator("[data-layer='5'] [data-testid=hit]").evaluate_all(
        "cards => cards.map(c => Number(c.dataset.id))")
    assert got == want
    # the gallery's class filter: a slow first class must not overwrite the second
    info = httpx.get(f"{server}api/info").json()
    first, second = (c["label"] for c in info["classes"])
    held = _hold(page, re.compile(rf".*/api/gallery\?.*label={first}.*"))
    page.pg.evaluate("l => { location.hash = '#/gallery?class=' + l; }", first)
    page.pg.wait_for_timeout(200)
    page.go(f"#/gallery?class={second}")
    for route in held:
        route.continue_()
    page.pg.wait_for_timeout(500)
    page.settle()
    labels = {it["id"] for it in httpx.get(f"{server}api/gallery?label={second}").json()["items"]}
    shown = page.pg.locator("#gallery a").evaluate_all("a => a.map(x => Number(x.dataset.id))")
    assert shown and set(shown) == labels


# --------------------------------------------------------------------------- 6-7


def test_6_results_lead_on_focus_and_announcements_follow(page):
    page.open()
    assert page.pg.locator("nav a[aria-current=page]").inner_text() == "Gallery"
    page.pg.locator("#gallery a").nth(4).focus()
    page.pg.keyboard.press("Enter")
    page.pg.wait_for_url("**#/query/4")
    # focus moves to the results heading once they are painted (it fails if it never does)
    page.pg.wait_for_function("() => document.activeElement.id === 'query-results-title'")
    page.settle()
    assert "Results for image #4" in page.pg.locator("#announce").inner_text()
    first = page.pg.locator("[data-layer='6'] [data-testid=hit] a").first
    target = first.get_attribute("href")
    first.click()
    page.pg.wait_for_url(f"**{target}")
    page.settle()
    assert page.pg.locator("#query-caption").inner_text().startswith(
        "#" + target.split("/")[-1].split("?")[0] + " ")
    page.pg.click("#query-back")
    page.pg.wait_for_url("**#/gallery")
    page.settle()
    assert page.pg.locator("#gallery a").count() == 40
    page.pg.go_back()
    page.pg.go_back()
    page.settle()
    assert page.pg.url.endswith("#/query/4")


def test_7_choose_drop_or_paste_starts_the_search_and_k_searches_again(page, server):
    page.open("#/upload")
    limits = page.pg.locator("#upload-limits").inner_text()
    assert "20 MiB" in limits
    page.pg.set_input_files("#upload-file", files=_file("chosen.png", _png(3)))
    page.pg.wait_for_url("**#/upload/*")
    page.settle()
    assert _hits(page, "upload").count() == 15
    posts = [r for r in page.requests if r.startswith("POST")]
    page.pg.select_option("#upload-k", "10")
    page.pg.wait_for_url("**k=10*")
    page.settle()
    assert _hits(page, "upload").count() == 30
    assert [r for r in page.requests if r.startswith("POST")] == posts  # not sent again
    page.pg.reload()
    page.settle()
    assert _hits(page, "upload").count() == 30  # the URL holds the upload
    b64 = base64.b64encode(_png(4)).decode()
    for event in ("paste", "drop"):
        page.pg.evaluate("""([b64, event]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], event + '.png', {type: 'image/png'}));
            const e = event === 'paste'
                ? new ClipboardEvent('paste', {clipboardData: dt, bubbles: true})
                : new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true});
            (event === 'paste' ? document : document.getElementById('drop')).dispatchEvent(e);
        }""", [b64, event])
        page.pg.wait_for_function("n => document.querySelector('#upload-caption').textContent"
                                  ".startsWith(n)", arg=f"{event}.png")
        page.settle()
        assert _hits(page, "upload").count() == 30
    n_posts = len([r for r in page.requests if r.startswith("POST")])
    page.pg.evaluate("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(21 * 2 ** 20)], 'huge.png', {type: 'image/png'}));
        const input = document.getElementById('upload-file');
        input.files = dt.files;
        input.dispatchEvent(new Event('change'));
    }""")
    error = page.pg.locator("#error")
    error.wait_for(state="visible")
    assert "20 MiB" in error.inner_text() and "huge.png" in error.inner_text()
    assert len([r for r in page.requests if r.startswith("POST")]) == n_posts  # never sent


# --------------------------------------------------------------------------- 8: phone


def test_8_phone_no_overflow_big_targets_one_row_nav_layers_side_by_side(phone):
    for view in VIEWS:
        phone.open(view)
        width = phone.pg.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"], (view, width)
        small = phone.pg.evaluate("""() => [...document.querySelectorAll(
              'a, button, select, input, label[for], summary')]
            .filter(e => e.offsetParent && !e.classList.contains('sr-only')
                    && !e.closest('p, li.api-row, figcaption'))
            .map(e => [e.outerHTML.slice(0, 60), e.getBoundingClientRect()])
            .filter(([_, r]) => r.width < 24 || r.height < 24)""")
        assert not small, (view, small)
        tops = phone.pg.locator("nav[aria-label=Main] a").evaluate_all(
            "a => a.map(x => Math.round(x.getBoundingClientRect().top))")
        assert len(set(tops)) == 1, tops
    phone.open("#/query/2")
    boxes = phone.pg.locator("[data-testid=query-results] .layer").evaluate_all(
        "l => l.map(x => x.getBoundingClientRect()).map(r => [r.top, r.left, r.width])")
    assert len(boxes) == 3 and len({round(t) for t, _, _ in boxes}) == 1
    phone.open("#/results")
    for th in phone.pg.locator("th").all():
        assert th.evaluate("e => e.getClientRects().length === 1 && "
                           "e.scrollWidth <= e.clientWidth + 1")
        lines = th.evaluate("e => Math.round(e.getBoundingClientRect().height / "
                            "parseFloat(getComputedStyle(e).lineHeight || 20))")
        assert lines <= 2
    # issue 22: nothing cut off: every table and figure fits the phone's width
    for box in phone.pg.locator("#results-body .table-wrap, #results-body .figure").all():
        assert box.evaluate("e => e.scrollWidth <= e.clientWidth + 1 && "
                            "e.getBoundingClientRect().right <= innerWidth"), box.inner_html()[:80]
    phone.pg.screenshot(path=str(ARTIFACTS / "web-phone-results.png"), full_page=True)


# --------------------------------------------------------------------------- 9-10


def test_9_gallery_names_filters_pages_and_fills_its_rows(page, server):
    page.open()
    caps = page.pg.locator("#gallery .cap .name").all_inner_texts()
    items = httpx.get(f"{server}api/gallery?limit=40").json()["items"]
    assert caps == [it["class_name"] for it in items]
    assert page.pg.locator("#view-gallery .pager").count() == 2
    columns = page.pg.locator("#gallery").evaluate(
        "g => getComputedStyle(g).gridTemplateColumns.split(' ').length")
    assert 120 % columns == 0 and columns >= 8
    label = items[0]["label"]
    page.pg.select_option("#gallery-class", str(label))
    page.pg.wait_for_url(f"**class={label}*")
    page.settle()
    ids = page.pg.locator("#gallery a").evaluate_all("a => a.map(x => Number(x.dataset.id))")
    assert ids == [it["id"] for it in items if it["label"] == label]
    # issue 22: a page past the end shows the last page, and the address says so
    page.open(f"#/gallery?class={label}&page=2")
    page.pg.wait_for_url(re.compile(rf".*#/gallery\?class={label}$"))
    page.settle()
    assert page.pg.locator("#gallery a").count() == 20
    assert "There is no page 2" in page.pg.locator("#notice").inner_text()
    assert page.pg.locator(".pager .range").first.inner_text() == "1–20 of 20 · page 1 of 1"


def test_10_docs_and_redoc_work_offline(page):
    page.open("#/api")
    assert page.pg.locator("#view-api a[href=docs]").count() == 1
    assert page.pg.locator("#api-list .api-row").count() >= 8
    page.pg.goto(page.base + "docs")
    page.pg.locator(".swagger-ui .info .title").wait_for()
    page.pg.locator(".opblock-summary-path", has_text="/api/search/{image_id}").first.wait_for()
    page.pg.goto(page.base + "redoc")  # leads to /docs
    page.pg.wait_for_url("**/docs")
    page.pg.locator(".swagger-ui .info .title").wait_for()
    host = page.base.rstrip("/")
    assert all(r.split(" ", 1)[1].startswith(host) for r in page.requests
               if not r.split(" ", 1)[1].startswith(("about:", "data:", "blob:"))), page.requests


# --------------------------------------------------------------------------- 11-13


def test_11_results_speak_to_a_user(page, web_run, monkeypatch):
    from neuralcodes import lineage
    from neuralcodes.retrieval import load_codes
    from neuralcodes.web import results

    # the 4-class run is not like for like with the course: no course column, top-5 n/a
    page.open("#/results")
    heads = page.pg.locator("[data-testid=map-table] thead th").all_inner_texts()
    assert heads == ["layer", "mAP", "P@5", "P@10"]
    foot = page.pg.locator("[data-testid=eval-table] tfoot").inner_text()
    assert "25.0%" in foot and "35.0%" not in foot and "n/a" in foot
    assert page.pg.locator("[data-testid=eval-table] tbody td").nth(2).inner_text() == "n/a"
    assert "top-5 is n/a: with 4 classes" in page.pg.locator("#view-results").inner_text()
    # where it is like for like (the report's rule says so), the course's numbers are beside
    monkeypatch.setattr(results, "course_comparable",
                        lambda *a: {"classification": True, "map": True})
    made = load_codes(RunDir(web_run).codes("ood", False)).made_by  # from the served weights
    RunDir(web_run).report_html.write_text(
        "<!doctype html><html lang=en><title>r</title></html>\n" + lineage.text_line(made))
    try:
        page.open("#/results")
        text = page.pg.locator("#view-results").inner_text()
        assert "Task" not in text and "pre-ReLU" in text
        heads = page.pg.locator("[data-testid=map-table] thead th").all_inner_texts()
        assert heads == ["layer", "mAP", "P@5", "P@10", "course"]
        chance = page.pg.locator("[data-testid=map-table] tfoot").inner_text()
        assert chance.startswith("chance") and "%" in chance
        row = page.pg.locator("[data-testid=map-table] tbody tr").first.inner_text()
        assert re.search(r"\d+\.\d%", row) and "28.7%" in row
        foot = page.pg.locator("[data-testid=eval-table] tfoot").inner_text()
        assert "25.0%" in foot and "35.0%" in foot  # chance 1/4, course
        assert page.pg.locator("[data-testid=eval-table] tbody td").nth(1).inner_text() \
            .endswith("%")
        page.pg.click("text=Read the full report")
        page.pg.wait_for_url("**/report.html")
    finally:
        RunDir(web_run).report_html.unlink()
    page.open("#/query/2")
    assert "pre-ReLU" in page.pg.locator("#query-about").inner_text()


def test_12_bad_query_ids_get_a_clear_message_and_no_stale_image(page):
    page.open("#/query/3")
    for hash_, words in (("#/query/99999", "There is no image #99999"),
                         ("#/query/-1", "“-1” is not an image id"),
                         ("#/query/abc", "“abc” is not an image id")):
        page.go(hash_)
        assert words in page.pg.locator("#error").inner_text()
        assert page.pg.locator("#view-query").is_visible()
        assert page.pg.locator("#view-gallery").is_hidden()
        assert page.pg.locator("#query-image").is_hidden() and _hits(page).count() == 0
        assert "Input should" not in page.pg.locator("main").inner_text()
    page.go("#/nowhere")
    assert page.pg.locator("#notfound-title").is_visible()


def test_13_titles_skip_link_headings_favicon_transparency_and_tiny_uploads(page):
    titles = set()
    for view in VIEWS:
        page.open(view)
        titles.add(page.pg.title())
        assert page.pg.locator(".view:not([hidden]) h1").count() == 1
    assert len(titles) == len(VIEWS), titles
    page.open()
    page.pg.keyboard.press("Tab")
    assert page.pg.evaluate("() => document.activeElement.textContent") == "Skip to content"
    page.pg.keyboard.press("Enter")
    assert page.pg.evaluate("() => document.activeElement.id") == "gallery-title"
    assert page.pg.evaluate("() => fetch('favicon.ico').then(r => r.status)") == 200
    assert page.pg.locator("link[rel=icon]").count() == 1
    page.open("#/upload")
    page.pg.set_input_files("#upload-file", files=_file("clear.png", _png(5, (64, 64), True)))
    page.pg.wait_for_url("**#/upload/*")
    page.settle()
    top = page.pg.locator("#upload-preview").evaluate("""img => {
        const c = document.createElement('canvas'); c.width = c.height = 64;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        return [...g.getImageData(0, 0, 64, 20).data]; }""")
    assert min(top) == 255  # transparent on white, not black
    assert "Transparent areas were filled with white" in page.pg.locator("#upload-notes") \
        .inner_text()
    page.pg.set_input_files("#upload-file", files=_file("tiny.png", _png(6, (10, 10))))
    page.pg.wait_for_function("() => document.querySelector('#upload-notes').textContent"
                              ".includes('10×10')")
    assert "enlarged to 64×64" in page.pg.locator("#upload-notes").inner_text()


def test_14_fewer_results_than_k_are_said_not_claimed(page):
    """A database smaller than k (an index of 3 images; faked here, the app under test has no
    index): the title says "all 3", not "top 5", and the answer's note is shown."""
    note = "5 results per layer asked for, but the index holds only 3 images; showing all 3"

    def smaller(route: object) -> None:
        response = route.fetch()
        body = response.json()
        body.update(shown=3, note=note,
                    layers=[{**layer, "hits": layer["hits"][:3]} for layer in body["layers"]])
        route.fulfill(response=response, json=body)

    page.pg.route("**/api/search", smaller)
    page.open("#/upload")
    page.pg.set_input_files("#upload-file", files=_file("small.png", _png(8)))
    page.pg.wait_for_url("**#/upload/*")
    page.settle()
    assert page.pg.locator("#upload-results-title").inner_text() == \
        "Most similar images (all 3 per layer)"
    assert note + "." in page.pg.locator("#upload-notes").inner_text()
    assert _hits(page, "upload").count() == 9


def test_15_the_upload_hint_and_notes_say_the_aspect_ratio_is_not_kept(page):
    page.open("#/upload")
    assert "resized to 64×64, the size of the training images, without keeping its aspect " \
        "ratio" in page.pg.locator("#upload-limits").inner_text()
    page.pg.set_input_files("#upload-file", files=_file("wide.png", _png(9, (123, 77))))
    page.pg.wait_for_url("**#/upload/*")
    page.settle()
    assert "Your image is 123×77: it was squeezed to 64×64 (the aspect ratio is not kept)" in \
        page.pg.locator("#upload-notes").inner_text()
    page.pg.set_input_files("#upload-file", files=_file("low.png", _png(11, (120, 40))))
    page.pg.wait_for_function("() => document.querySelector('#upload-caption').textContent"
                              ".startsWith('low.png (')")
    page.settle()
    notes = page.pg.locator("#upload-notes li").all_inner_texts()
    assert notes == ["Your image is 120×40: it was squeezed to 64×64 (the aspect ratio is not "
                     "kept), as are the images of an index.",
                     "Its height (40 px) was enlarged to 64, so the model sees it blurred "
                     "vertically."]
    page.pg.set_input_files("#upload-file", files=_file("square.png", _png(10, (80, 80))))
    page.pg.wait_for_function("() => document.querySelector('#upload-caption').textContent"
                              ".startsWith('square.png (')")
    page.settle()
    assert "squeezed" not in page.pg.locator("#upload-notes").inner_text()
    assert page.pg.locator("#upload-notes li").count() == 0


def test_15b_the_page_shows_the_servers_notes_about_the_query(page):
    """One source of truth: the page shows the answer's query.notes and derives none itself."""

    def said(route: object) -> None:
        response = route.fetch()
        body = response.json()
        body["query"]["notes"] = ["A note from the server."]
        route.fulfill(response=response, json=body)

    page.pg.route("**/api/search", said)
    page.open("#/upload")
    page.pg.set_input_files("#upload-file", files=_file("wide.png", _png(12, (123, 20), True)))
    page.pg.wait_for_url("**#/upload/*")
    page.settle()
    assert page.pg.locator("#upload-notes li").all_inner_texts() == ["A note from the server."]


# ---------------------------------------------------------------- issue 22: never a dead end


def _unreachable_was_expected(page: Page) -> None:
    """Requests the test made fail on purpose are not problems."""
    page.problems[:] = [p for p in page.problems if "ERR_FAILED" not in p]


def test_22_first_load_shows_its_loading_state_then_recovers_when_the_server_returns(page):
    held: list = []
    down = {"on": False}
    page.pg.route("**/api/info", lambda route: route.abort() if down["on"] else held.append(route))
    # the page's clock stands still (install alone lets it run): the automatic retry, due in
    # 5 s, never fires however slow the machine, so only the button retries
    page.pg.clock.install(time=0)
    page.pg.clock.pause_at(1000)
    page.pg.goto(page.base + "#/results")
    while not held:
        page.pg.wait_for_timeout(20)
    status = page.pg.locator("#app-status")
    assert status.is_visible() and "Loading" in status.inner_text()  # not a blank page
    down["on"] = True
    held[0].abort()  # the server is unreachable
    error = page.pg.locator("#error")
    error.wait_for()
    assert "did not answer" in error.inner_text() and "neuralcodes serve" in error.inner_text()
    assert status.is_hidden()
    # navigation while the server is down keeps saying so (no dead link, no blank view)
    # (the link boots the app again: its attempt must fail and redraw the error, marked new,
    # before the server comes back)
    page.pg.evaluate("document.querySelector('#error .error-text').dataset.old = '1'")
    page.pg.click("nav[aria-label=Main] >> text=Gallery")
    page.pg.wait_for_url("**#/gallery")
    page.pg.locator("#error .error-text:not([data-old])").wait_for()
    assert page.pg.locator("#error [data-testid=retry]").is_visible()
    page.pg.unroute("**/api/info")  # the server is back: the retry starts the app
    page.pg.click("#error [data-testid=retry]")
    page.settle()
    assert page.pg.locator("#view-gallery").is_visible() and error.is_hidden()
    assert page.pg.locator("#gallery a").count() == 40
    page.pg.click("nav[aria-label=Main] >> text=Results")  # and navigation works on
    page.settle()
    assert page.pg.locator("[data-testid=eval-table]").is_visible()
    _unreachable_was_expected(page)


def test_22_the_app_retries_by_itself_while_the_server_is_down(page):
    calls = []

    def down_once(route: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            route.abort()
        else:
            route.continue_()

    page.pg.route("**/api/info", down_once)
    page.pg.clock.install()
    page.pg.goto(page.base + "#/gallery")
    page.pg.locator("#error [data-testid=retry]").wait_for()
    assert "Try again (automatically in 5 s)" in page.pg.locator("#error").inner_text()
    page.pg.clock.run_for(6000)
    page.settle()
    assert len(calls) == 2 and page.pg.locator("#gallery a").count() == 40
    _unreachable_was_expected(page)


def test_22_a_failed_load_says_what_happened_and_retries_after_the_servers_wait(page):
    page.expected_status.add(503)
    page.open("#/query/3")
    busy = {"on": True}

    def search(route: object) -> None:
        if busy["on"]:
            route.fulfill(status=503, headers={"Retry-After": "2"},
                          json={"detail": "the server is busy decoding other images"})
        else:
            route.continue_()

    page.pg.route(re.compile(r".*/api/search/4\?.*"), search)
    page.go("#/query/4")
    error = page.pg.locator("#error")
    assert "The server is busy" in error.inner_text() and "wait 2 s" in error.inner_text()
    retry = page.pg.locator("#error [data-testid=retry]")
    assert retry.is_disabled() and retry.inner_text() == "Try again (in 2 s)"
    busy["on"] = False
    page.pg.wait_for_function("() => !document.querySelector('#error .retry').disabled")
    retry.click()
    page.settle()
    assert _hits(page).count() == 15 and error.is_hidden()


def test_22_a_failed_upload_clears_the_address_and_offers_its_retry(page):
    page.expected_status.update({400, 503})
    page.open("#/upload")
    page.pg.set_input_files("#upload-file", files=_file("first.png", _png(21)))
    page.pg.wait_for_url("**#/upload/*")
    page.settle()
    first = page.pg.url
    answers = iter([
        {"status": 503, "headers": {"Retry-After": "1"},
         "json": {"detail": "the server is busy decoding other images; retry in 1 s"}},
        {"status": 400, "json": {"detail": "b.png is not a readable image: corrupt header "
                                           "(Truncated File Read)"}}])
    page.pg.route("**/api/search", lambda route: route.fulfill(**next(answers)))
    page.pg.set_input_files("#upload-file", files=_file("b.png", _png(22)))
    retry = page.pg.locator("#error [data-testid=retry]")
    retry.wait_for()
    # the address no longer names the previous upload: a reload would show its results
    assert page.pg.url.endswith("#/upload") and page.pg.url != first
    assert "busy" in page.pg.locator("#error").inner_text()
    page.pg.wait_for_function("() => !document.querySelector('#error .retry').disabled")
    retry.click()  # the same file again: now the server cannot read it
    page.pg.locator("#error", has_text="could not be read").wait_for()
    text = page.pg.locator("#error").inner_text()
    assert text.startswith("b.png could not be read as an image") and "Choose another" in text
    assert retry.count() == 0  # the file is the problem: no retry with it
    page.pg.unroute("**/api/search")
    page.pg.set_input_files("#upload-file", files=_file("c.png", _png(23)))
    page.pg.wait_for_url("**#/upload/*")
    page.settle()
    assert _hits(page, "upload").count() == 15 and page.pg.url != first


def test_22_address_parameters_are_checked_and_corrected_in_the_address(page):
    page.open("#/query/3?k=999&layer=9")
    assert page.pg.url.endswith("#/query/3")
    notice = page.pg.locator("#notice").inner_text()
    assert "k=999 is not valid (1 to 39 results per layer)" in notice
    assert "layer=9 is not valid" in notice
    assert _hits(page).count() == 15  # the defaults: 5 per layer, all layers
    page.go("#/query/3?k=10&layer=6")
    assert page.pg.url.endswith("#/query/3?k=10&layer=6") and page.pg.locator("#notice").is_hidden()
    assert _hits(page).count() == 10
    page.go("#/gallery?page=abc&x=1")
    assert page.pg.url.endswith("#/gallery")


def test_22_page_numbers_are_clamped_with_a_last_page_link(page):
    page.open()
    page.pg.evaluate("() => { state.pageSize = 12; }")  # 40 images: 4 pages
    page.go("#/gallery?page=99")
    assert page.pg.url.endswith("#/gallery?page=4")
    pager = page.pg.locator("#view-gallery .pager").first
    assert pager.locator(".range").inner_text() == "37–40 of 40 · page 4 of 4"
    assert "1 to" not in page.pg.locator("#announce").inner_text()
    assert "images 37 to 40 of 40" in page.pg.locator("#announce").inner_text()
    page.go("#/gallery?page=2")
    last = pager.get_by_label("Last page (4)")
    assert last.get_attribute("href") == "#/gallery?page=4"
    assert pager.get_by_label("First page").get_attribute("href") == "#/gallery"


def test_22_thumbnails_are_large_enough_and_5_per_layer_show_at_1366(page):
    page.open("#/query/2")
    page.pg.wait_for_function("() => [...document.querySelectorAll('.hit img')]"
                              ".every(i => i.complete)")
    for box in page.pg.locator("[data-testid=query-results] .layer").all():
        rects = box.locator(".hit img").evaluate_all(
            "i => i.map(x => x.getBoundingClientRect()).map(r => [r.width, r.bottom])")
        assert all(w >= 96 for w, _ in rects), rects
        assert sum(bottom <= DESKTOP["height"] for _, bottom in rects) >= 5, rects
    first = page.pg.locator("[data-testid=query-results] .hit a").first
    first.hover()
    page.pg.wait_for_timeout(300)  # the zoom's transition
    assert first.locator("img").evaluate("i => i.getBoundingClientRect().width") >= 190


def test_22_post_relu_rows_show_no_course_number(page):
    def both(route: object) -> None:
        response = route.fetch()
        body = response.json()
        body["map"] = body["map"] + [dict(m, relu=True) for m in body["map"]]
        body["reference"] = {"map": {"5": 0.28695, "6": 0.31776, "7": 0.34487}, "top1": None,
                             "top5": None, "source": "course"}  # a like-for-like run's
        route.fulfill(response=response, json=body)

    page.pg.route("**/api/results", both)
    page.open("#/results")
    rows = page.pg.locator("[data-testid=map-table] tbody tr").all()
    assert len(rows) == 6
    for row in rows:
        cells = row.locator("td").all_inner_texts()
        if cells[0] == "post-ReLU":
            assert cells[-1] == "—"
        else:
            assert cells[-1].endswith("%")


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_22_the_report_is_styled_in_the_app_and_from_disk_and_axe_clean(browser, server,
                                                                       web_run, viewport):
    from neuralcodes.report import write_report

    axe_module = pytest.importorskip("axe_playwright_python.sync_playwright")
    size = DESKTOP if viewport == "desktop" else PHONE
    html = write_report(web_run)[1]
    p = Page(browser, server, size)
    try:
        for url in (server + "report.html", html.resolve().as_uri()):
            p.pg.goto(url)
            p.pg.wait_for_load_state("load")
            # the report's own style applies (the app's CSP blocked it before)
            assert p.pg.locator("main").evaluate("m => getComputedStyle(m).maxWidth") == "960px"
            width = p.pg.evaluate("() => document.documentElement.scrollWidth")
            assert width <= size["width"], (url, width)
            assert p.pg.locator("h2").first.inner_text() == "Answers"
            result = axe_module.Axe().run(p.pg)
            bad = [(v["id"], v["impact"]) for v in result.response["violations"]
                   if v["impact"] in ("serious", "critical")]
            assert not bad, (url, bad)
            p.pg.screenshot(path=str(ARTIFACTS / f"report-{viewport}.png"), full_page=True)
        assert not p.problems, p.problems  # a blocked style would be a console error
    finally:
        p.pg.close()
        RunDir(web_run).report_html.unlink()
        RunDir(web_run).report_md.unlink()


# --------------------------------------------------------------------------- accessibility


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_axe_finds_no_serious_or_critical_violation_on_any_view(browser, server, viewport):
    axe_module = pytest.importorskip("axe_playwright_python.sync_playwright")
    axe = axe_module.Axe()
    p = Page(browser, server, DESKTOP if viewport == "desktop" else PHONE)
    try:
        found = {}
        for view in [*VIEWS, "#/query/abc"]:
            p.open(view)
            result = axe.run(p.pg)
            bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
                   for v in result.response["violations"]
                   if v["impact"] in ("serious", "critical")]
            if bad:
                found[view] = bad
        p.open("#/upload")
        p.pg.set_input_files("#upload-file", files=_file("a.png", _png(7)))
        p.pg.wait_for_url("**#/upload/*")
        p.settle()
        bad = [v["id"] for v in axe.run(p.pg).response["violations"]
               if v["impact"] in ("serious", "critical")]
        if bad:
            found["upload result"] = bad
        assert not found, found
        assert not p.problems, p.problems
    finally:
        p.pg.close()


def test_16_method_selector_adds_a_pooled_column_and_why_similar_shows_the_cells(page):
    page.open("#/query/2")
    assert page.pg.locator("[data-testid=query-results] .layer").count() == 3
    page.pg.select_option("[data-testid=method]", "spoc")
    page.pg.wait_for_url("**method=spoc*")
    page.settle()
    boxes = page.pg.locator("[data-testid=query-results] .layer")
    assert boxes.count() == 4 and boxes.nth(3).locator("h3").inner_text() == "conv5 spoc"
    assert page.pg.locator(".layer .why").count() == 5  # on the pooled column's hits only
    first = boxes.nth(3).get_by_test_id("hit").first
    first.get_by_test_id("why").click()
    overlay = first.get_by_test_id("why-map")
    page.pg.wait_for_function("img => img.complete && img.naturalWidth === 262",
                              arg=overlay.element_handle())
    assert "api/why/2/" in overlay.get_attribute("src") and "method=spoc" in \
        overlay.get_attribute("src")
    assert first.get_by_test_id("why").get_attribute("aria-expanded") == "true"
    page.pg.select_option("[data-testid=method]", "")  # back to the codes only
    page.pg.wait_for_function("() => !location.hash.includes('method')")
    page.settle()
    assert page.pg.locator("[data-testid=query-results] .layer").count() == 3
