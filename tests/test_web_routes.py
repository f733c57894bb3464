"""The web app's routers one at a time, each mounted alone on a bare FastAPI app (the whole
app on a trained run: ``test_web.py``)."""

from __future__ import annotations

import base64
import hashlib
import types

import pytest

from neuralcodes.cli import build_parser
from neuralcodes.runs import RunDir

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from neuralcodes.web import routes  # noqa: E402
from neuralcodes.web.results import REPORT_COMMAND  # noqa: E402


def alone(router: fastapi.APIRouter) -> TestClient:
    app = fastapi.FastAPI(docs_url=None, redoc_url=None)
    app.include_router(router)
    return TestClient(app)


def test_the_pages_router_alone_serves_the_page_and_nothing_else():
    client = alone(routes.pages())
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == (routes.STATIC / "index.html").read_text(encoding="utf-8")
    assert client.get("/redoc", follow_redirects=False).headers["location"] == "docs"
    assert client.get("/api/info").status_code == 404  # another router's route


def test_the_results_router_alone_serves_the_report_with_its_own_policy(tmp_path):
    served = types.SimpleNamespace(run=RunDir(tmp_path))
    client = alone(routes.results(served))
    missing = client.get("/report.html")
    assert missing.status_code == 404 and REPORT_COMMAND in missing.json()["detail"]
    assert client.get("/api/curves.png").status_code == 404
    style = "h1{color:red}"
    (tmp_path / "report.html").write_text(f"<html><style>{style}</style><h1>r</h1></html>")
    page = client.get("/report.html")
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    policy = page.headers["content-security-policy"]
    assert page.status_code == 200 and f"'sha256-{digest}'" in policy
    assert "script-src 'none'" in policy


def test_the_report_command_is_a_command_that_exists():
    argv = REPORT_COMMAND.replace("RUN", "runs/x").split()[1:]
    args = build_parser(argv).parse_args(argv)
    assert (args.command, args.config, str(args.out)) == ("run", "runs/x/config.json", "runs/x")
