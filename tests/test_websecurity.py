"""neuralcodes.web.security on a tiny app, then wired into the real app (issue 12)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import chromium, serving
from neuralcodes.web.security import CSP, Busy, DecodeLimiter, SameOriginPost, SecurityHeaders

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


def tiny_app(limiter: DecodeLimiter | None = None, **same_origin: object) -> object:
    app = fastapi.FastAPI()
    limiter = limiter or DecodeLimiter(slots=1, wait_s=0.05)
    limiter.install(app)

    @app.get("/")
    def home() -> dict[str, str]:
        return {"page": "home"}

    @app.get("/own-csp")
    def own() -> fastapi.Response:
        return fastapi.Response("x", headers={"Content-Security-Policy": "default-src 'none'"})

    @app.post("/echo")
    def echo() -> dict[str, str]:
        return {"ok": "yes"}

    @app.post("/decode")
    def decode() -> dict[str, int]:
        with limiter.slot():
            return {"active": limiter.active}

    app.add_middleware(SameOriginPost, **same_origin)
    app.add_middleware(SecurityHeaders)
    return app


def test_every_answer_has_the_security_headers():
    with TestClient(tiny_app()) as c:
        for r in (c.get("/"), c.get("/nope"), c.post("/echo", headers={"Origin": "http://x.y"})):
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["content-security-policy"] == CSP
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers["x-frame-options"] == "DENY"
        assert c.get("/own-csp").headers["content-security-policy"] == "default-src 'none'"


@pytest.mark.parametrize("headers,status", [
    ({}, 200),  # curl, scripts
    ({"Origin": "http://testserver"}, 200),
    ({"Origin": "http://TestServer:80"}, 200),
    ({"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}, 200),
    ({"Sec-Fetch-Site": "same-origin"}, 200),
    ({"Sec-Fetch-Site": "none"}, 200),
    ({"Origin": "http://evil.example"}, 403),
    ({"Origin": "http://testserver:8001"}, 403),  # another port: another origin
    ({"Origin": "https://testserver"}, 403),
    ({"Origin": "null"}, 403),
    ({"Sec-Fetch-Site": "cross-site"}, 403),
    ({"Sec-Fetch-Site": "same-site"}, 403),
])
def test_posts_from_other_origins_get_403(headers, status):
    with TestClient(tiny_app()) as c:
        r = c.post("/echo", headers=headers)
        assert r.status_code == status, r.text
        if status == 403:
            assert "cross-origin" in r.json()["detail"]
        assert c.get("/", headers=headers).status_code == 200  # reads are not refused


def test_extra_allowed_origins():
    app = tiny_app(allowed_origins=["http://localhost:5173"])
    with TestClient(app) as c:
        assert c.post("/echo", headers={"Origin": "http://localhost:5173"}).status_code == 200
        assert c.post("/echo", headers={"Origin": "http://localhost:5174"}).status_code == 403


def test_the_limiter_answers_503_with_retry_after_when_the_wait_runs_out():
    limiter = DecodeLimiter(slots=1, wait_s=0.05, retry_after_s=3)
    with TestClient(tiny_app(limiter)) as c:
        assert c.post("/decode").json() == {"active": 1}
        with limiter.slot():  # another decode holds the only slot
            r = c.post("/decode")
        assert r.status_code == 503 and r.headers["retry-after"] == "3"
        assert "busy" in r.json()["detail"]
        assert c.post("/decode").status_code == 200  # free again
    assert limiter.refused == 1 and limiter.active == 0


def test_the_limiter_never_runs_more_than_its_slots():
    limiter = DecodeLimiter(slots=2, wait_s=5)
    busy = []

    def work() -> None:
        try:
            with limiter.slot():
                time.sleep(0.02)
        except Busy:
            busy.append(1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert limiter.peak == 2 and not busy and limiter.active == 0
    with pytest.raises(ValueError):
        DecodeLimiter(slots=0)


# --------------------------------------------------------------------------- the real app


@pytest.fixture(scope="module")
def client(web_run: Path) -> Iterator[TestClient]:
    from neuralcodes.web import create_app

    with TestClient(create_app(web_run, device="cpu")) as c:
        yield c


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _upload(client: TestClient, data: bytes, **headers: str) -> object:
    return client.post("/api/search", files={"file": ("q.png", data, "image/png")},
                       headers=headers)


def test_the_app_refuses_cross_site_uploads_and_sends_the_headers(client):
    data = _png(Image.new("RGB", (80, 80), (200, 30, 30)))
    r = _upload(client, data, Origin="http://evil.example")
    assert r.status_code == 403 and r.headers["x-content-type-options"] == "nosniff"
    assert _upload(client, data, Origin="http://testserver").status_code == 200
    assert _upload(client, data).status_code == 200
    for path in ("/", "/static/app.js", "/api/info", "/api/image/0"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"


def test_the_app_decodes_big_16_bit_and_transparent_pngs(client):
    big = _png(Image.new("RGB", (7000, 7000), (10, 200, 30)))  # strips, a few MB at a time
    r = _upload(client, big)
    assert r.status_code == 200, r.text
    q = r.json()["query"]
    assert (q["format"], q["width"], q["height"]) == ("PNG", 7000, 7000)
    grey16 = _png(Image.fromarray(np.full((90, 90), 32768, np.uint16)))
    assert _upload(client, grey16).status_code == 200
    clear = _png(Image.new("RGBA", (90, 90), (0, 0, 0, 0)))
    assert _upload(client, clear).status_code == 200


def test_the_app_answers_503_when_decoding_is_saturated(client):
    limiter = client.app.state.decode_limiter
    wait, limiter.wait_s = limiter.wait_s, 0.05
    try:
        with limiter.slot(), limiter.slot():
            r = _upload(client, _png(Image.new("RGB", (80, 80))))
        assert r.status_code == 503 and r.headers["retry-after"].isdigit()
    finally:
        limiter.wait_s = wait
    assert _upload(client, _png(Image.new("RGB", (80, 80)))).status_code == 200


# --------------------------------------------------------------------------- in Chromium


@pytest.mark.browser
@pytest.mark.slow
def test_the_page_runs_under_its_csp_in_chromium(web_run, tmp_path):
    """No CSP violation while the page loads, browses and searches with an upload."""
    from neuralcodes.web import create_app

    upload = tmp_path / "mine.png"
    Image.new("RGB", (120, 90), (20, 120, 220)).save(upload)
    with serving(create_app(web_run, device="cpu")) as (host, port), chromium() as browser:
        url = f"http://{host}:{port}/"
        page = browser.new_page()
        page.set_default_timeout(15_000)
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text)
                if "CSP" in m.text or "Content Security Policy" in m.text else None)
        page.add_init_script("document.addEventListener('securitypolicyviolation', "
                             "e => console.error('CSP ' + e.violatedDirective))")
        page.goto(url)
        page.locator("[data-testid=gallery] img").first.click()
        page.locator("[data-testid=query-results] .hit").first.wait_for()
        page.goto(f"{url}#/upload")
        page.set_input_files("#upload-file", str(upload))  # the search starts
        page.locator("[data-testid=upload-results] .hit").first.wait_for()
        page.goto(f"{url}#/results")
        page.wait_for_timeout(500)
        assert page.locator("#upload-preview").get_attribute("src").startswith("data:")
        assert not problems, problems
        # the policy is in force: an inline script is refused, and reported
        page.evaluate("() => { const s = document.createElement('script'); "
                      "s.textContent = 'window.inlineRan = 1'; document.body.append(s); }")
        page.wait_for_timeout(300)
        assert page.evaluate("() => window.inlineRan") is None
        assert any("script-src" in m for m in problems), problems
