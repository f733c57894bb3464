"""The web app's JSON API (FastAPI test client) on a tiny trained run.

The run (a tiny ConvNet trained on the generated fixture: 4 in-domain classes, 2 ood classes of
20 images) is built once per session (conftest's ``web_run``); the browser test reuses it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuralcodes import lineage
from neuralcodes.cli import build_parser, main
from neuralcodes.config import Config
from neuralcodes.data import Dataset, Splits, make_splits
from neuralcodes.files import read_json, write_json
from neuralcodes.retrieval import load_codes, read_image
from neuralcodes.retrieval.metrics import chance_average_precision
from neuralcodes.runs import RunDir, TrainedRun

fastapi_testclient = pytest.importorskip("fastapi.testclient")

MAX_BYTES = 300_000  # the test app's upload limits: small, so tests can exceed them cheaply
MAX_PIXELS = 1_000_000
STATIC = Path(__file__).resolve().parents[1] / "src" / "neuralcodes" / "web" / "static"


def png(image: np.ndarray | Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    """Encode an image (array or PIL) in ``fmt``."""
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def run(web_run: Path) -> Path:
    shutil.rmtree(RunDir(web_run).root / "codes", ignore_errors=True)  # create_app computes them
    return web_run


@pytest.fixture(scope="module")
def data(run: Path, tiny_cache: Path) -> tuple[Dataset, Splits]:
    dataset = Dataset.load(tiny_cache)
    cfg = Config.from_dict(read_json(RunDir(run).config)["config"])
    return dataset, make_splits(dataset, cfg.data)


@pytest.fixture(scope="module")
def own_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder of "own" images of various sizes and formats, plus one unreadable file."""
    folder = tmp_path_factory.mktemp("own-images")
    rng = np.random.default_rng(7)
    files = {}
    for name, size, fmt in (("red.png", (90, 70), "PNG"), ("noise.jpg", (300, 200), "JPEG"),
                            ("sub/blue.webp", (64, 64), "WEBP")):
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        arr[..., 0 if "red" in name else 2] = 250
        Image.fromarray(arr).save(path, format=fmt)
        files[name] = path
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    files["folder"] = folder
    return files


@pytest.fixture(scope="module")
def index_file(run: Path, own_images: dict[str, Path]) -> Path:
    from neuralcodes.retrieval import build_index

    update = build_index(own_images["folder"], TrainedRun.open(run, device="cpu", progress=False))
    assert update.count == 3 and [p.name for p, _ in update.failed] == ["broken.png"]
    return update.path


@pytest.fixture(scope="module")
def client(run: Path, index_file: Path) -> Iterator[object]:
    from neuralcodes.web import create_app

    assert not RunDir(run).codes("ood", False).exists()  # the app computes them
    app = create_app(run, index_file, device="cpu", max_upload_bytes=MAX_BYTES,
                     max_pixels=MAX_PIXELS)
    with fastapi_testclient.TestClient(app) as c:
        yield c


def expected_ranking(codes: np.ndarray, labels: np.ndarray, q: int
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """Independent reference: ids and scores of all other items by (score desc, id asc), and
    the non-interpolated average precision of query ``q``."""
    scores = codes @ codes[q]
    others = np.array([j for j in range(len(codes)) if j != q])
    order = others[np.lexsort((others, -scores[others]))]
    relevant = labels[order] == labels[q]
    precision_at = np.cumsum(relevant) / np.arange(1, len(order) + 1)
    return order, scores[order], float(precision_at[relevant].mean())


# --------------------------------------------------------------------------- pages, gallery


def test_info_describes_the_run_and_its_databases(client, run, data):
    dataset, splits = data
    info = client.get("/api/info").json()
    assert info["run"] == run.name
    assert info["layers"] == ["5", "6", "7"]
    assert info["relu"] is False and info["k"] == 5
    assert info["gallery_size"] == len(splits.ood) == 40
    assert [d["name"] for d in info["databases"]] == ["ood", "index"]
    assert info["databases"][1]["size"] == 3
    assert [c["wnid"] for c in info["classes"]] == [dataset.wnids[c] for c in splits.ood_classes]
    assert info["max_upload_bytes"] == MAX_BYTES and info["max_pixels"] == MAX_PIXELS
    assert RunDir(run).codes("ood", False).is_file()  # computed and saved by create_app


def test_gallery_pages_through_every_ood_image(client, data):
    dataset, splits = data
    seen = []
    for offset in range(0, 40, 15):
        page = client.get(f"/api/gallery?offset={offset}&limit=15").json()
        assert page["total"] == 40
        seen += page["items"]
    assert [it["id"] for it in seen] == list(range(40))
    labels = dataset.labels[splits.ood]
    assert [it["label"] for it in seen] == labels.tolist()
    assert [it["class_name"] for it in seen] == [dataset.names[c] for c in labels]
    assert client.get("/api/gallery?offset=100").json()["items"] == []
    assert client.get("/api/gallery?limit=0").status_code == 422


def test_image_is_the_cached_ood_image_as_lossless_png(client, data):
    dataset, splits = data
    for i in (0, 17, 39):
        r = client.get(f"/api/image/{i}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        got = np.asarray(Image.open(io.BytesIO(r.content)))
        np.testing.assert_array_equal(got, dataset.images[splits.ood[i]])


@pytest.mark.parametrize("path", [
    "/api/image/40", "/api/image/-1", "/api/image/abc", "/api/image/..%2Fconfig.json",
    "/api/image/%2e%2e%2f%2e%2e%2fconfig.json", "/static/../config.json",
    "/static/%2e%2e/web.py", "/static/..%2f..%2fpyproject.toml", "/api/index-image/3",
    "/config.json", "/api/curves.png/../config.json",
])
def test_requests_name_images_by_id_only_and_never_reach_other_files(client, path):
    r = client.get(path)
    assert r.status_code in (404, 422), r.text
    assert "conv_widths" not in r.text and "import" not in r.text


# --------------------------------------------------------------------------- search by id


def test_search_by_id_ranks_the_other_ood_images_with_marks_scores_and_ap(client, run):
    codes = load_codes(RunDir(run).codes("ood", False))
    for q in (0, 5, 38):
        r = client.get(f"/api/search/{q}?k=7").json()
        assert r["query"]["id"] == q and r["database_size"] == 39 and r["k"] == 7
        assert [layer["layer"] for layer in r["layers"]] == ["5", "6", "7"]
        for layer in r["layers"]:
            order, scores, ap = expected_ranking(codes.layers[layer["layer"]], codes.labels, q)
            hits = layer["hits"]
            assert [h["id"] for h in hits] == order[:7].tolist()
            assert q not in [h["id"] for h in hits]
            assert [h["rank"] for h in hits] == list(range(1, 8))
            np.testing.assert_allclose([h["score"] for h in hits], scores[:7], rtol=1e-5)
            assert [h["same_class"] for h in hits] == \
                (codes.labels[order[:7]] == codes.labels[q]).tolist()
            assert layer["ap"] == pytest.approx(ap, rel=1e-9)


def test_gallery_queries_average_to_the_map_and_p5_on_the_results_page(client):
    aps: dict[str, list[float]] = {"5": [], "6": [], "7": []}
    p5: dict[str, list[float]] = {"5": [], "6": [], "7": []}
    for q in range(40):
        for layer in client.get(f"/api/search/{q}?k=5").json()["layers"]:
            aps[layer["layer"]].append(layer["ap"])
            p5[layer["layer"]].append(np.mean([h["same_class"] for h in layer["hits"]]))
    res = client.get("/api/results").json()
    assert res["map_source"].startswith("computed")
    assert {m["layer"]: m["map"] for m in res["map"]} == \
        pytest.approx({k: float(np.mean(v)) for k, v in aps.items()})
    assert {m["layer"]: m["p@5"] for m in res["map"]} == \
        pytest.approx({k: float(np.mean(v)) for k, v in p5.items()})
    assert all(m["n_queries"] == 40 and m["relu"] is False for m in res["map"])


@pytest.mark.parametrize("query", ["k=0", "k=40", "k=abc"])
def test_search_by_id_validates_k(client, query):
    r = client.get(f"/api/search/3?{query}")
    assert r.status_code == 422 and r.json()["detail"]


def test_search_by_id_with_a_method_adds_its_column_and_explains_each_hit(client, run):
    import torch

    from neuralcodes.retrieval.codes import ood_codes
    from neuralcodes.retrieval.methods import pooling
    from neuralcodes.runs import TrainedRun
    from neuralcodes.runtime import to_input

    assert client.get("/api/info").json()["methods"][:2] == ["mac", "spoc"]
    r = client.get("/api/search/5?k=4&method=spoc").json()
    assert [layer["layer"] for layer in r["layers"]] == ["5", "6", "7", "conv5/spoc"]
    column = r["layers"][-1]
    assert column["method"] == "spoc" and 0 <= column["ap"] <= 1
    # the column ranks by SPoC of the conv5 maps, as the library computes them
    trained = TrainedRun.open(run, device="cpu", progress=False)
    codes = ood_codes(trained, False)
    with torch.inference_mode():
        maps = trained.model.forward_intermediates(to_input(trained.images(codes.index)),
                                                   ("conv5",))["conv5"]
    order, scores, _ = expected_ranking(pooling.spoc(maps), np.asarray(codes.labels), 5)
    assert [h["id"] for h in column["hits"]] == order[:4].tolist()
    np.testing.assert_allclose([h["score"] for h in column["hits"]], scores[:4], atol=1e-4)
    png_ = client.get(f"/api/why/5/{column['hits'][0]['id']}.png?method=spoc")
    assert png_.status_code == 200 and png_.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png_.content)).size == (128 * 2 + 6, 128)
    for bad in ("/api/search/5?method=nope", "/api/why/5/6.png?method=nope",
                "/api/search/5?method=gem-fit"):  # gem-fit: no methods.json in this run
        answer = client.get(bad)
        assert answer.status_code == 422 and "method" in answer.json()["detail"], bad


# --------------------------------------------------------------------------- uploads


def upload(client, data: bytes, name: str = "q.png", mime: str = "image/png", **form: str):
    return client.post("/api/search", files={"file": (name, data, mime)}, data=form)


def test_uploading_an_ood_image_finds_it_first_in_every_layer(client, data):
    dataset, splits = data
    r = upload(client, png(dataset.images[splits.ood[12]]), k="4")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["database"] == "ood" and body["database_size"] == 40
    q = body["query"]
    assert (q["format"], q["width"], q["height"], q["filename"]) == ("PNG", 64, 64, "q.png")
    preview = Image.open(io.BytesIO(base64.b64decode(q["url"].split(",", 1)[1])))
    np.testing.assert_array_equal(np.asarray(preview), dataset.images[splits.ood[12]])
    for layer in body["layers"]:
        assert len(layer["hits"]) == 4 and layer["ap"] is None
        assert layer["hits"][0]["id"] == 12
        assert layer["hits"][0]["score"] == pytest.approx(1.0, abs=1e-5)
        assert all(h["same_class"] is None for h in layer["hits"])  # the query has no class
        scores = [h["score"] for h in layer["hits"]]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("fmt,mime,size", [("JPEG", "image/jpeg", (640, 480)),
                                           ("WEBP", "image/webp", (33, 120)),
                                           ("PNG", "image/png", (200, 150))])
def test_any_size_jpeg_png_or_webp_is_resized_to_64_and_searched(client, data, fmt, mime, size):
    dataset, splits = data
    big = Image.fromarray(dataset.images[splits.ood[3]]).resize(size, Image.Resampling.BICUBIC)
    r = upload(client, png(big, fmt), f"big.{fmt.lower()}", mime, k="5")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["query"]["format"], body["query"]["width"], body["query"]["height"]) == \
        (fmt, *size)
    assert [len(layer["hits"]) for layer in body["layers"]] == [5, 5, 5]


def test_a_k_beyond_the_index_is_said_not_claimed(client, own_images, data):
    """k larger than the database: every image is given, and the answer says so (as `search`)."""
    dataset, splits = data
    body = upload(client, own_images["noise.jpg"].read_bytes(), "noise.jpg", "image/jpeg",
                  k="5", database="index").json()
    assert (body["k"], body["shown"], body["database_size"]) == (5, 3, 3)
    assert body["note"] == ("5 results per layer asked for, but the index holds only 3 images; "
                            "showing all 3")
    assert [len(layer["hits"]) for layer in body["layers"]] == [3, 3, 3]
    again = client.get(f"/api/upload/{body['query']['upload_id']}?k=7&database=index").json()
    assert (again["k"], again["shown"]) == (7, 3) and "showing all 3" in again["note"]
    full = upload(client, png(dataset.images[splits.ood[3]]), k="5").json()  # 40 ood images
    assert (full["k"], full["shown"], full["note"]) == (5, 5, None)
    item = client.get("/api/search/3?k=39").json()  # the largest k: all other ood images
    assert (item["k"], item["shown"], item["note"]) == (39, 39, None)


def test_upload_searches_the_index_built_by_neuralcodes_index(client, own_images):
    data = own_images["noise.jpg"].read_bytes()
    r = upload(client, data, "noise.jpg", "image/jpeg", k="3", database="index")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["database"] == "index" and body["database_size"] == 3
    for layer in body["layers"]:
        top = layer["hits"][0]
        assert top["class_name"] == "noise.jpg"  # the file's name, never its folder
        assert top["score"] == pytest.approx(1.0, abs=2e-3)  # float16 codes
        assert len(layer["hits"]) == 3
    thumb = client.get(body["layers"][0]["hits"][0]["url"])
    assert thumb.status_code == 200
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(thumb.content))),
                                  read_image(own_images["noise.jpg"]))


def _bomb_png(side: int) -> bytes:
    return png(Image.new("L", (side, side)), optimize=True)


@pytest.mark.parametrize("case,status,words", [
    ("text", 415, "not a JPEG, PNG or WebP"),
    ("gif", 415, "not a JPEG, PNG or WebP"),
    ("empty", 400, "empty"),
    ("truncated_png", 400, "corrupt or truncated PNG"),
    ("truncated_jpeg", 400, "corrupt or truncated JPEG"),
    ("too_many_bytes", 413, "too large"),
    ("too_many_pixels", 413, "1100x1000 pixels"),
])
def test_bad_uploads_get_a_clear_4xx_message(client, data, case, status, words):
    dataset, splits = data
    image = dataset.images[splits.ood[0]]
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    payload = {
        "text": b"hello, I am not an image",
        "gif": png(image, "GIF"),
        "empty": b"",
        "truncated_png": png(noise)[:5000],
        "truncated_jpeg": png(noise, "JPEG")[:3000],
        "too_many_bytes": png(noise),  # ~480 KB > MAX_BYTES
        "too_many_pixels": png(Image.new("RGB", (1100, 1000))),  # a few KB, 1.1 Mpx
    }[case]
    r = upload(client, payload)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


@pytest.mark.parametrize("side", [150, 300])  # Pillow's warning range, then its error range
def test_decompression_bombs_are_refused_by_pillows_guard_too(client, monkeypatch, side):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 128 * 128)  # below the app's own limit
    r = upload(client, _bomb_png(side))
    assert r.status_code == 413
    assert "decompression bomb" in r.json()["detail"]


def test_request_bodies_above_the_limit_are_refused_before_parsing(client):
    big = b"x" * (MAX_BYTES + 100_000)
    r = client.post("/api/search", content=big, headers={"content-type": "multipart/form-data; "
                                                                         "boundary=zz"})
    assert r.status_code == 413 and "request too large" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: streamed
        for _ in range(10):
            yield b"y" * 50_000

    r = client.post("/api/search", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413


@pytest.mark.parametrize("form,status", [({"k": "0"}, 422), ({"k": "99"}, 422),
                                         ({"database": "elsewhere"}, 400)])
def test_upload_form_fields_are_validated(client, data, form, status):
    dataset, splits = data
    r = upload(client, png(dataset.images[splits.ood[0]]), **form)
    assert r.status_code == status and r.json()["detail"]


def test_without_an_index_the_index_database_is_refused(run, data):
    from neuralcodes.web import create_app

    dataset, splits = data
    with fastapi_testclient.TestClient(create_app(run, device="cpu")) as c:
        assert [d["name"] for d in c.get("/api/info").json()["databases"]] == ["ood"]
        r = upload(c, png(dataset.images[splits.ood[0]]), database="index")
        assert r.status_code == 400 and "no index is loaded" in r.json()["detail"]
        assert c.get("/api/index-image/0").status_code == 404


# --------------------------------------------------------------------------- results, schema


def test_results_page_shows_eval_json_map_json_and_the_curves(client, run):
    rd = RunDir(run)
    res = client.get("/api/results").json()
    assert res["eval"] == read_json(rd.eval_json)
    assert set(res["eval"]["splits"]) == {"train", "val", "test"}
    curves = client.get(res["curves_url"])
    assert curves.status_code == 200 and curves.content == rd.curves.read_bytes()
    saved = {"pre": {"5": {"map": 0.25, "p@5": 0.5, "n_queries": 40},
                     "6": {"map": 0.5, "p@5": 0.6, "n_queries": 40}},
             "post": {"7": {"map": 0.75, "p@5": 0.7, "n_queries": 40}}}
    write_json(rd.retrieval / "map.json", saved)  # records nothing of what made it: not shown
    assert client.get("/api/results").json()["map_source"].startswith("computed by the server")
    made = load_codes(rd.codes("ood", False)).made_by  # made from the served weights: shown
    write_json(rd.retrieval / "map.json", lineage.stamped(saved, made))
    try:
        res = client.get("/api/results").json()
    finally:
        (rd.retrieval / "map.json").unlink()
    assert res["map_source"] == f"{run.name}/retrieval/map.json"
    assert [(m["layer"], m["relu"], m["map"], m["p@5"]) for m in res["map"]] == \
        [("5", False, 0.25, 0.5), ("6", False, 0.5, 0.6), ("7", True, 0.75, 0.7)]


def test_the_report_and_the_results_page_state_the_same_numbers(client, run):
    """Chance levels, mAP and P@k (null beyond the database) come from one module
    (neuralcodes.retrieval.scores): the report and the web app show the same ones, with and
    without map.json."""
    from neuralcodes.report import analysis, collect

    rd = RunDir(run)

    def shown() -> tuple[dict, dict]:
        web = client.get("/api/results").json()
        facts = collect(run)
        return web, facts

    web, facts = shown()  # no map.json: the app computes from the labels, the report from sizes
    chance = pytest.approx((float(chance_average_precision(39, 19)), 19 / 39))
    assert all((m["chance_map"], m["chance_p"]) == chance for m in web["map"])
    assert (facts["chance"]["map"], facts["chance"]["precision"]) == chance
    report = analysis.results(facts)
    assert web["chance"] == {"top1": report["chance_top1"], "top5": report["chance_top5"],
                             "top5_trivial": report["top5_trivial"]}
    assert analysis.quality(facts)["chance"] == web["chance"]["top1"]
    saved = {"chance_map": 0.3, "chance_p@5": 0.4, "chance_p@10": None,
             "pre": {layer: {"map": 0.5 + int(layer) / 100, "p@5": 0.6, "p@10": None,
                             "n_queries": 40} for layer in ("5", "6", "7")}}
    made = load_codes(rd.codes("ood", False)).made_by  # made from the served weights
    write_json(rd.map_json, lineage.stamped(saved, made))
    try:
        web, facts = shown()
    finally:
        rd.map_json.unlink()
    layers = analysis.layers(facts)
    assert {(m["chance_map"], m["chance_p"]) for m in web["map"]} == {(0.3, 0.4)}
    assert (layers["chance"], facts["chance"]["precision"]) == (0.3, 0.4)
    assert {m["layer"]: (m["map"], m["p@5"], m["p@10"]) for m in web["map"]} == {
        layer: (m["map"], m["p@5"], m["p@10"]) for layer, m in layers["per_layer"].items()}


def test_openapi_schema_documents_the_json_api(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [("/api/info", "get"), ("/api/gallery", "get"), ("/api/results", "get"),
                         ("/api/image/{image_id}", "get"), ("/api/search/{image_id}", "get"),
                         ("/api/search", "post"), ("/api/index-image/{image_id}", "get")]:
        assert paths[path][method]["summary"], path
    post = paths["/api/search"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert {"413", "415", "400"} <= set(post["responses"])
    for op in (post, paths["/api/search/{image_id}"]["get"]):  # the response shape is described
        ok = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith("/SearchResult")
    models = schema["components"]["schemas"]
    assert {"rank", "score", "same_class", "url"} <= set(models["HitOut"]["properties"])
    assert {"layer", "ap", "hits"} <= set(models["LayerResult"]["properties"])
    assert "p@5" in models["MapRow"]["properties"]


def test_home_page_and_static_files_load_nothing_from_elsewhere(client):
    home = client.get("/")
    assert home.status_code == 200 and "static/app.js" in home.text
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.text == (STATIC / name).read_text()
    for path in STATIC.iterdir():
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


# --------------------------------------------------------------------------- command line


def test_serve_binds_localhost_by_default_and_passes_its_options(run, monkeypatch):
    import uvicorn

    args = build_parser().parse_args(["serve", str(run)])
    assert (args.host, args.port, args.index) == ("127.0.0.1", 8000, None)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert main(["serve", str(run), "--port", "8765", "--device", "cpu",
                 "--max-upload-mb", "1", "--set", "retrieval.k=7"]) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8765)
    local = fastapi_testclient.TestClient(seen["app"], base_url="http://localhost:8765")
    info = local.get("/api/info").json()
    assert info["max_upload_bytes"] == 2**20 and info["k"] == 7  # --set reaches the app
    # a page elsewhere that rebinds its DNS name to 127.0.0.1 is not answered
    rebound = fastapi_testclient.TestClient(seen["app"], base_url="http://evil.example:8765")
    assert rebound.get("/api/info").status_code == 400


def test_serve_refuses_a_port_in_use_before_loading_anything(run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(run), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert f"cannot listen on 127.0.0.1:{port}" in err and "loading" not in out


@pytest.mark.parametrize("argv,words", [
    (["serve", "{missing}"], "not a run directory"),
    (["serve", "{run}", "--port", "0"], "--port must be between"),
    (["serve", "{run}", "--index", "{missing}.npz"], "no index file"),
    (["serve", "{run}", "--set", "model.fc_width=3"], "cannot change model.fc_width"),
])
def test_serve_reports_bad_arguments_in_one_line(run, tmp_path, capsys, argv, words):
    argv = [a.format(run=run, missing=tmp_path / "nothing") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_serve_checks_its_index_before_computing_the_ood_codes(run, tmp_path, capsys):
    """A wrong --index ends in its one error line, before the ood codes (and their progress
    bar) are computed."""
    fresh = tmp_path / "run"
    shutil.copytree(run, fresh, ignore=shutil.ignore_patterns("codes"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["serve", str(fresh), "--index", str(tmp_path / "nope.npz"), "--device", "cpu",
                 "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"neuralcodes: error: {tmp_path / 'nope.npz'}: no index file; build "
                          f"one with `neuralcodes index FOLDER --run {fresh}`")
    assert err.count("\n") == 1  # one line (naming the run's indexes, if it has some)
    assert not (fresh / "codes").exists()  # nothing was computed


# --------------------------------------------------------------------------- issue 13: API side


def test_docs_and_redoc_work_offline_with_local_assets(client):
    assert client.get("/redoc", follow_redirects=False).headers["location"] == "docs"
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and "openapi.json" in r.text
        assets = [a for a in ("swagger-ui-bundle.js", "swagger-ui.css") if a in r.text]
        assert assets and "cdn" not in r.text.lower() and "https://" not in r.text.split(
            "<body>")[0].replace("https://fastapi.tiangolo.com", "")
        for asset in assets:
            assert client.get(f"/static-docs/{asset}").status_code == 200
    assert client.get("/favicon.ico").status_code == 200
    assert client.get("/static/favicon.svg").headers["content-type"].startswith("image/svg")


def test_gallery_filters_by_class(client, data):
    dataset, splits = data
    label = splits.ood_classes[1]
    page = client.get(f"/api/gallery?label={label}&limit=7").json()
    assert page["total"] == 20 and page["label"] == label and len(page["items"]) == 7
    ids = np.flatnonzero(dataset.labels[splits.ood] == label)
    assert [it["id"] for it in page["items"]] == ids[:7].tolist()
    assert client.get("/api/gallery?label=99").status_code == 422


def test_transparent_png_is_composited_on_white_and_tiny_images_say_upscaled(client):
    rgba = np.zeros((64, 64, 4), np.uint8)  # fully transparent black: a viewer shows white
    rgba[:32, :, :3] = (200, 30, 30)
    rgba[:32, :, 3] = 255
    body = upload(client, png(rgba)).json()
    q = body["query"]
    assert q["transparent"] is True and q["upscaled"] is False
    preview = np.asarray(Image.open(io.BytesIO(base64.b64decode(q["url"].split(",", 1)[1]))))
    assert (preview[40:, :] == 255).all() and (preview[:20, :, 0] == 200).all()
    tiny = upload(client, png(np.full((10, 10, 3), 90, np.uint8))).json()["query"]
    assert tiny["upscaled"] is True and tiny["transparent"] is False
    assert (tiny["width"], tiny["height"]) == (10, 10)


def test_the_answer_says_what_was_done_to_the_query_image(client):
    """The notes about the query come from the server (an API user reads them too): a 120x40
    image is squeezed and only its height is enlarged; a 64x64 opaque image needs no note."""
    wide = upload(client, png(np.full((40, 120, 3), 90, np.uint8))).json()["query"]
    assert (wide["width"], wide["height"], wide["upscaled"]) == (120, 40, True)
    assert wide["notes"] == [
        "Your image is 120×40: it was squeezed to 64×64 (the aspect ratio is not kept), as are "
        "the images of an index.",
        "Its height (40 px) was enlarged to 64, so the model sees it blurred vertically."]
    assert upload(client, png(np.full((64, 64, 3), 90, np.uint8))).json()["query"]["notes"] == []
    tall = upload(client, png(np.full((100, 30, 3), 90, np.uint8))).json()["query"]
    assert tall["notes"][1] == ("Its width (30 px) was enlarged to 64, so the model sees it "
                                "blurred horizontally.")
    rgba = np.zeros((10, 10, 4), np.uint8)
    small = upload(client, png(rgba)).json()
    assert small["query"]["notes"] == [
        "Your image is only 10×10 pixels: it was enlarged to 64×64, so the model sees a blurry "
        "version.", "Transparent areas were filled with white."]
    uid = small["query"]["upload_id"]
    assert client.get(f"/api/upload/{uid}").json()["query"]["notes"] == small["query"]["notes"]
    schema = client.get("/openapi.json").json()["components"]["schemas"]["QueryInfo"]
    assert "squeezed" in schema["properties"]["notes"]["description"]


def test_an_upload_can_be_searched_again_by_its_id(client, data):
    dataset, splits = data
    first = upload(client, png(dataset.images[splits.ood[12]]), k="3").json()
    uid = first["query"]["upload_id"]
    again = client.get(f"/api/upload/{uid}?k=6")
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["k"] == 6 and body["query"]["upload_id"] == uid
    assert body["query"]["url"] == first["query"]["url"]
    assert [h["id"] for h in body["layers"][0]["hits"][:3]] == \
        [h["id"] for h in first["layers"][0]["hits"]]
    assert client.get(f"/api/upload/{uid}?database=index").json()["database"] == "index"
    gone = client.get("/api/upload/0123456789abcdef")
    assert gone.status_code == 404 and "choose the image again" in gone.json()["detail"]
    assert client.get("/api/upload/..%2Fconfig.json").status_code in (404, 422)


def test_chance_level_is_the_expected_ap_of_a_random_ranking(client):
    from itertools import combinations

    n, r = 9, 3  # exact: every placement of the relevant items is equally likely
    aps = []
    for pos in combinations(range(n), r):
        aps.append(np.mean([(i + 1) / (p + 1) for i, p in enumerate(pos)]))
    assert chance_average_precision(n, r) == pytest.approx(np.mean(aps))
    body = client.get("/api/search/4").json()
    chance = chance_average_precision(39, 19)
    assert body["relevant"] == 19 and body["chance_ap"] == pytest.approx(chance)
    assert body["relu"] is False


def test_results_give_chance_levels_p10_figures_and_the_course_reference_like_for_like(client, run,
                                                                       monkeypatch):
    res = client.get("/api/results").json()
    assert res["chance"] == {"top1": 0.25, "top5": 1.0, "top5_trivial": True}
    assert res["n_classes"] == 4
    chance = chance_average_precision(39, 19)
    assert all(m["p@10"] is not None and m["chance_map"] == pytest.approx(chance)
               for m in res["map"])
    assert [f["name"] for f in res["figures"]] == ["curves"]
    assert client.get("/api/figure/curves.png").content == RunDir(run).curves.read_bytes()
    assert client.get("/api/figure/config.png").status_code == 404
    assert res["report_url"] is None and client.get("/report.html").status_code == 404
    made = load_codes(RunDir(run).codes("ood", False)).made_by  # made from the served weights
    RunDir(run).report_html.write_text("<html><title>report</title>"
                                       "<style>body{color:red}</style></html>\n"
                                       + lineage.text_line(made))
    try:
        res = client.get("/api/results").json()
        page = client.get(res["report_url"])
        assert page.text.startswith("<html>")
        # the report's own inline style is allowed by its hash (it rendered unstyled under
        # the app's policy), nothing else inline, and no script at all
        digest = base64.b64encode(hashlib.sha256(b"body{color:red}").digest()).decode()
        policy = page.headers["content-security-policy"]
        assert f"style-src 'self' 'sha256-{digest}';" in policy
        assert "script-src 'none'" in policy and "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
    finally:
        RunDir(run).report_html.unlink()
    # 4 classes and 40 ood images are not the course's 190 and 5,000: no raw course number
    # beside them, as the report refuses them "not on one scale" (course_comparable decides)
    assert res["reference"] is None
    from neuralcodes.web import results

    real = results.course_reference()
    for ood, maps in (({"classes": 2, "images": 40}, real["map"]),
                      ({"classes": 10, "images": 5000}, {})):
        monkeypatch.setattr(results, "course_reference",
                            lambda ood=ood: {**real, "num_classes": 4, "ood": ood})
        ref = client.get("/api/results").json()["reference"]
        assert ref["map"] == maps and (ref["top1"], ref["top5"]) == (0.35, 0.6134)


def test_size_limits_read_the_same_in_the_page_and_the_error(client):
    info = client.get("/api/info").json()
    assert info["max_upload_text"] == "293 KiB"
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    assert "293 KiB" in upload(client, png(noise)).json()["detail"]


def test_search_by_id_takes_one_served_layer_and_refuses_others(client):
    from neuralcodes import features

    one = client.get("/api/search/3?layer=6")
    assert one.status_code == 200 and [x["layer"] for x in one.json()["layers"]] == ["6"]
    detail = f"unknown layer '9' (choose from {', '.join(features.code_names())})"
    r = client.get("/api/search/3?layer=9")
    assert r.status_code == 422 and r.json()["detail"] == detail


def test_an_upload_takes_one_served_layer_and_refuses_others(client, data):
    dataset, splits = data
    image = png(dataset.images[splits.ood[12]])
    r = client.post("/api/search?layer=7", files={"file": ("q.png", image, "image/png")})
    assert r.status_code == 200 and [x["layer"] for x in r.json()["layers"]] == ["7"]
    again = client.get(f"/api/upload/{r.json()['query']['upload_id']}?layer=5")
    assert [x["layer"] for x in again.json()["layers"]] == ["5"]
    r = client.post("/api/search?layer=9", files={"file": ("q.png", image, "image/png")})
    assert r.status_code == 422 and r.json()["detail"].startswith("unknown layer '9'")


def test_figures_are_named_by_their_files_in_the_run(run):
    from neuralcodes.web.results import figure_table

    rd = RunDir(run)
    table = figure_table(rd, 5)
    assert table["top5_layer6"][1] == rd.top_figure(5, "6")  # the file's own name
    assert table["methods"][1] == rd.methods_file("png")
    assert all(path.stem == name for name, (_, path) in table.items())
