"""The web app's gallery of the user's own images (``serve --index NAME``): pages by folder and
name, search with one of them, the originals (served from inside the indexed folder only), and
the same actions on the index hits of an upload.

The index is built once per module on the session's tiny trained run (conftest's ``web_run``).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from neuralcodes.retrieval.search import SAME_CODE, SAME_FILE
from neuralcodes.runs import TrainedRun

fastapi_testclient = pytest.importorskip("fastapi.testclient")

#: relative path -> (colour channel pushed up, seed); "trip/copy.png" is a copy of "red.png"
PHOTOS = {"red.png": 0, "blue.png": 2, "trip/green.png": 1, "trip/night <b>.png": 2,
          "trip/deep/x.jpg": 0, "odd\x1bname.png": 1}


def _photo(channel: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    arr[..., channel] = 250
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder with subfolders, a copy of one image, a name with HTML in it, and a file
    outside the folder (the target of a symbolic link added after indexing)."""
    base = tmp_path_factory.mktemp("collection")
    root = base / "photos"
    for seed, (name, channel) in enumerate(PHOTOS.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        _photo(channel, seed).save(path)
    shutil.copy(root / "red.png", root / "trip" / "copy.png")
    secret = base / "secret.png"
    _photo(1, 99).save(secret)
    return {"root": root, "secret": secret}


@pytest.fixture(scope="module")
def client(web_run: Path, photos: dict[str, Path]) -> Iterator[object]:
    from neuralcodes.retrieval import build_index
    from neuralcodes.web import create_app

    update = build_index(photos["root"], TrainedRun.open(web_run, device="cpu", progress=False),
                         name="photos")
    assert update.count == len(PHOTOS) + 1
    app = create_app(web_run, "photos", device="cpu")
    with fastapi_testclient.TestClient(app) as c:
        yield c


def upload(client: object, data: bytes, name: str, **form: str) -> object:
    return client.post("/api/search", files={"file": (name, data, "image/png")}, data=form)


def _ids(client: object) -> dict[str, int]:
    items = client.get("/api/collection?limit=1000").json()["items"]
    return {f"{it['folder']}/{it['class_name']}".lstrip("/"): it["id"] for it in items}


def test_the_collection_pages_by_folder_and_name(client):
    page = client.get("/api/collection").json()
    assert page["total"] == page["size"] == 7
    assert {f["folder"]: f["count"] for f in page["folders"]} == {"": 3, "trip": 3,
                                                                  "trip/deep": 1}
    item = next(it for it in page["items"] if it["class_name"] == "night <b>.png")
    assert item["folder"] == "trip" and item["source"] == "index"
    assert item["url"] == f"api/index-image/{item['id']}"
    assert item["original_url"] == f"api/original/{item['id']}"
    trip = client.get("/api/collection", params={"folder": "trip"}).json()
    assert sorted(it["class_name"] for it in trip["items"]) == ["copy.png", "green.png",
                                                               "night <b>.png"]
    found = client.get("/api/collection", params={"q": "DEEP"}).json()  # folder, any case
    assert [it["class_name"] for it in found["items"]] == ["x.jpg"] and found["q"] == "deep"
    both = client.get("/api/collection", params={"folder": "trip", "q": "ree"}).json()
    assert [it["class_name"] for it in both["items"]] == ["green.png"]
    second = client.get("/api/collection?offset=4&limit=4").json()
    assert second["total"] == 7 and len(second["items"]) == 3
    assert client.get("/api/collection", params={"folder": "nowhere"}).json()["total"] == 0


def test_searching_with_an_index_image_marks_itself_and_its_copy(client):
    ids = _ids(client)
    body = client.get(f"/api/index-search/{ids['red.png']}?k=3").json()
    assert body["database"] == "index" and body["query"]["source"] == "index"
    assert body["query"]["class_name"] == "red.png" and body["query"]["folder"] == ""
    assert "centred by the mean training code" in body["scores"]
    assert SAME_FILE in body["scores"] and SAME_CODE in body["scores"]
    for layer in body["layers"]:
        top = layer["hits"][:2]
        assert {(h["id"], h["same"]) for h in top} == {(ids["red.png"], SAME_FILE),
                                                       (ids["trip/copy.png"], SAME_CODE)}
        assert all(h["score"] > 0.999 for h in top)
        assert all(h["same"] is None and h["score"] < 0.999 for h in layer["hits"][2:])
        assert all(h["original_url"] == f"api/original/{h['id']}" for h in layer["hits"])
    assert client.get("/api/index-search/7").status_code == 422  # ids 0 to 6


def test_an_upload_of_an_indexed_image_finds_it_as_identical_code(client, photos):
    ids = _ids(client)
    data = (photos["root"] / "blue.png").read_bytes()
    body = upload(client, data, "blue.png", database="index", k="2").json()
    assert "centred" in body["scores"]
    for layer in body["layers"]:
        hit = layer["hits"][0]
        assert (hit["id"], hit["same"], hit["folder"]) == (ids["blue.png"], SAME_CODE, "")
        assert hit["original_url"] == f"api/original/{ids['blue.png']}"
    ood = upload(client, data, "blue.png", database="ood").json()
    assert ood["scores"] is None and all(h["source"] == "ood" for h in ood["layers"][0]["hits"])


def test_the_original_is_served_with_its_name_escaped(client, photos):
    ids = _ids(client)
    r = client.get(f"/api/original/{ids['trip/night <b>.png']}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (photos["root"] / "trip" / "night <b>.png").read_bytes()
    assert r.headers["content-disposition"] == "inline; filename*=utf-8''night%20%3Cb%3E.png"
    assert r.headers["x-content-type-options"] == "nosniff"
    odd_id = ids["odd\\x1bname.png"]  # the name escaped
    odd = client.get(f"/api/original/{odd_id}")
    assert odd.headers["content-disposition"] == "inline; filename*=utf-8''odd%5Cx1bname.png"
    assert Image.open(io.BytesIO(client.get(f"/api/index-image/{ids['red.png']}").content)
                      ).size == (64, 64)


def test_no_file_outside_the_indexed_folder_is_served(client, photos):
    """Only integer ids reach the server; an entry whose file became a symbolic link out of
    the folder is refused (original and thumbnail), and no answer names a server folder."""
    for bad in ("/api/original/..%2f..%2fsecret.png", "/api/original/-1",
                "/api/original/7", "/api/original/%2e%2e", "/api/index-search/..%2f0"):
        r = client.get(bad)
        assert r.status_code in (404, 422), bad
        assert str(photos["root"]) not in r.text
    ids = _ids(client)
    target = photos["root"] / "trip" / "green.png"
    kept = target.read_bytes()
    target.unlink()
    target.symlink_to(photos["secret"])
    try:
        for url in (f"/api/original/{ids['trip/green.png']}",
                    f"/api/index-image/{ids['trip/green.png']}"):
            r = client.get(url)
            assert r.status_code == 404 and "outside the indexed folder" in r.json()["detail"]
            assert str(photos["secret"].parent) not in r.text
            assert photos["secret"].read_bytes() != r.content
    finally:
        target.unlink()
        target.write_bytes(kept)
    target.unlink()
    try:  # gone: 404 with the file name only
        r = client.get(f"/api/original/{ids['trip/green.png']}")
        assert r.status_code == 404 and r.json()["detail"].endswith("(green.png) is no longer "
                                                                     "there")
        assert str(photos["root"]) not in r.text
    finally:
        target.write_bytes(kept)


def test_without_an_index_the_collection_routes_say_so(web_run):
    from neuralcodes.web import create_app

    with fastapi_testclient.TestClient(create_app(web_run, device="cpu")) as c:
        r = c.get("/api/collection")
        assert r.status_code == 404 and "--index NAME" in r.json()["detail"]
        assert c.get("/api/original/0").status_code == 404
        assert c.get("/api/index-search/0").status_code == 404
