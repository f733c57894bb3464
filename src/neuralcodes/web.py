"""``neuralcodes serve RUN``: a local web app for query-by-example retrieval with a trained run.

Pages (plain HTML/JS in ``web_static/``, no build step, nothing loaded from elsewhere):

- **Gallery** of the out-of-domain images; clicking one ranks the other ood images by the cosine
  similarity of their layer 5, 6 and 7 codes and shows the top k per layer side by side, each
  marked same class (green ✓) or not (red ✗), with its similarity and the query's average
  precision per layer. This is exactly the study's protocol (query excluded by its index, ties
  broken by index: :func:`neuralcodes.metrics.ranking_metrics`).
- **Search with your image**: an uploaded JPEG/PNG/WebP of any size is resized to 64x64 like the
  training images (:func:`neuralcodes.codes.read_image`) and searched in the ood set or in an
  index built by ``neuralcodes index`` (``--index``).
- **Results**: the train/val/test table (``eval.json``), mAP per layer, the learning curves.
- **JSON API** under ``/api/``, described by the OpenAPI schema at ``/openapi.json``.

(No ``from __future__ import annotations`` here: FastAPI resolves the endpoint annotations, and
FastAPI itself is imported inside :func:`create_app`, so ``serve --help`` stays fast.)

Safety: images are addressed by integer ids only, so no path from a request ever reaches the
file system; request bodies, upload bytes and pixels are capped (decompression bombs are refused
from the image header, before decoding); anything that is not a readable JPEG, PNG or WebP gets a
4xx answer with a one-line ``detail``. The server binds 127.0.0.1 unless told otherwise, and
then answers only requests addressed to a local host name (no DNS rebinding).
"""

import argparse
import base64
import functools
import io
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import read_json

#: Upload limits (``create_app`` arguments, ``serve --max-upload-mb/--max-megapixels``).
DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20
DEFAULT_MAX_PIXELS = 50_000_000
#: Accepted upload formats: Pillow format name -> media type.
UPLOAD_FORMATS: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
MAX_K = 50
#: Host names a loopback-bound server answers to.
LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
#: Room for the multipart envelope around an upload of the maximum size.
MULTIPART_OVERHEAD = 64 * 2**10
STATIC = "web_static"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class UploadRejected(Exception):
    """An upload the app refuses; ``status`` is the HTTP status, the message its detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# --------------------------------------------------------------------------- uploads


def decode_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, dict]:
    """Upload bytes -> (uint8 (64, 64, 3) model input, ``{"format", "width", "height"}``).

    Only JPEG, PNG and WebP are accepted (415 otherwise). The pixel count is checked from the
    header before anything is decoded (413 above ``max_pixels``), and Pillow's own decompression
    bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) is treated as an error even in its warning range.
    Truncated or corrupt files give 400.
    """
    from neuralcodes import imageio  # imgsec hook: bounded decoding in neuralcodes.imageio

    try:  # imgsec hook
        image, info = imageio.decode_image(data, max_pixels=max_pixels)  # imgsec hook
    except imageio.ImageRejected as e:  # imgsec hook
        raise UploadRejected(e.status, e.reason) from None  # imgsec hook
    return image, info.as_dict()  # imgsec hook


def png_bytes(image: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) image as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


class BodyLimit:
    """ASGI middleware: a request body above ``limit`` bytes gets 413 before the app reads it.

    Bodies with a ``Content-Length`` are judged by it; others (chunked) are read up to the limit
    and then handed on, so a multipart parser never spools more than ``limit`` to disk.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.responses import JSONResponse

        upload = max(self.limit - MULTIPART_OVERHEAD, 0)
        response = JSONResponse({"detail": f"request too large (uploads are limited to "
                                           f"{upload:,} bytes)"}, 413)
        await response(scope, receive, send)


# --------------------------------------------------------------------------- API schema


class ImageItem(BaseModel):
    """An image of a database."""

    id: int = Field(description="its id: position in the ood set (or in the index)")
    label: int | None = Field(description="dataset class index (None for index images)")
    wnid: str | None = Field(description="WordNet id of the class (None for index images)")
    class_name: str = Field(description="class name; the file name for index images")
    url: str = Field(description="its 64x64 PNG, relative to the app's root")


class Hit(ImageItem):
    """One result of a search."""

    rank: int = Field(description="1 = most similar")
    score: float = Field(description="cosine similarity of the unit-length codes")
    same_class: bool | None = Field(description="same class as the query (None: the query has "
                                    "no class, e.g. an upload)")


class LayerResult(BaseModel):
    """The results of one layer's codes."""

    layer: str = Field(description='"5", "6" or "7"')
    ap: float | None = Field(description="the query's average precision over the full ranking "
                             "(ood queries only; None when its class has no other image)")
    hits: list[Hit]


class QueryInfo(BaseModel):
    """The query: an ood image, or an upload (with its format and size before resizing)."""

    source: Literal["ood", "upload"]
    id: int | None = None
    label: int | None = None
    wnid: str | None = None
    class_name: str | None = None
    url: str | None = Field(None, description="ood: its PNG; upload: a data: URL of the 64x64 "
                            "image the model saw")
    filename: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None


class SearchResult(BaseModel):
    """Top-k results per layer for one query."""

    query: QueryInfo
    database: Literal["ood", "index"]
    database_size: int = Field(description="images ranked (the query itself excluded)")
    k: int
    layers: list[LayerResult]


class Gallery(BaseModel):
    """A page of the ood images."""

    total: int
    offset: int
    limit: int
    items: list[ImageItem]


class Database(BaseModel):
    name: Literal["ood", "index"]
    size: int
    description: str


class OodClass(BaseModel):
    label: int
    wnid: str
    class_name: str


class Info(BaseModel):
    """The served run and the app's settings."""

    run: str
    layers: list[str]
    relu: bool = Field(description="post-ReLU (True) or pre-ReLU (False) codes")
    k: int = Field(description="default results per layer")
    max_k: int
    gallery_size: int
    databases: list[Database]
    classes: list[OodClass] = Field(description="the out-of-domain classes")
    upload_formats: list[str]
    max_upload_bytes: int
    max_pixels: int


class MapRow(BaseModel):
    """Mean average precision of one layer over all ood queries."""

    model_config = ConfigDict(populate_by_name=True)

    layer: str
    relu: bool
    map: float
    p_at_5: float | None = Field(None, alias="p@5", description="mean precision@5")
    n_queries: int


class Results(BaseModel):
    """The run's results."""

    run: str
    eval: dict[str, Any] | None = Field(description="eval.json: loss, top-1, top-5 per split "
                                        "(None before `neuralcodes evaluate`)")
    map: list[MapRow]
    map_source: str = Field(description="retrieval/map.json, or computed by the server")
    curves_url: str | None = Field(description="the learning curves PNG, if the run has one")


# --------------------------------------------------------------------------- the loaded run


class Retrieval:
    """What the app serves, loaded once: the run's model and ood codes, and an optional index.

    Built on :class:`neuralcodes.retrieval.Searcher` (one for the ood set, one for the index).
    Gallery ids are positions in the run's ood codes (the ood split's order); index ids are
    positions in the index file.
    """

    def __init__(self, run_dir: str | Path, index: str | Path | None = None, *,
                 device: str = "auto", progress: bool = False) -> None:
        from neuralcodes.retrieval import Searcher

        self.ood = Searcher(run_dir, device=device, progress=progress)
        self.index = None if index is None else Searcher(run_dir, index=index, device=device)
        self.run = self.ood.run.rd
        cfg = self.ood.run.cfg.retrieval
        self.layers = tuple(cfg.layers)
        self.k = int(cfg.k)
        self.dataset, splits = self.ood.run.data
        self.ood_classes = list(splits.ood_classes)
        codes = self.ood.codes
        if not np.array_equal(codes.index, splits.ood):
            raise NeuralCodesError(f"{self.run.codes('ood', codes.relu)} does not match the run's "
                                   "ood split; recompute it with `neuralcodes codes --force`")
        for name, searcher in (("ood codes", self.ood), ("index", self.index)):
            missing = [x for x in self.layers if searcher and x not in searcher.codes.layers]
            if missing:
                raise NeuralCodesError(f"the {name} has no codes for layer(s) "
                                       f"{', '.join(missing)}")
        self.labels = np.asarray(codes.labels, dtype=np.int64)
        self._model_lock = threading.Lock()
        self._map_lock = threading.Lock()
        self._map: list[dict[str, Any]] | None = None

    # -- descriptions ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.ood.codes)

    def item(self, i: int) -> dict[str, Any]:
        """Ood image ``i`` as the API describes it."""
        label = int(self.labels[i])
        return {"id": i, "label": label, "wnid": self.dataset.wnids[label],
                "class_name": self.dataset.names[label], "url": f"api/image/{i}"}

    def index_item(self, i: int) -> dict[str, Any]:
        """Entry ``i`` of the index as the API describes it (file name only, not its folder)."""
        assert self.index is not None
        return {"id": i, "label": None, "wnid": None,
                "class_name": Path(self.index.paths[i]).name, "url": f"api/index-image/{i}"}

    def databases(self) -> list[dict[str, Any]]:
        """The databases an uploaded image can be searched in."""
        out = [{"name": "ood", "size": len(self), "description": "the out-of-domain images"}]
        if self.index is not None:
            out.append({"name": "index", "size": len(self.index.codes),
                        "description": Path(self.index.source).name})
        return out

    @functools.lru_cache(maxsize=8192)  # noqa: B019  (one Retrieval per app, lives as long)
    def thumbnail(self, database: str, i: int) -> bytes:
        """The 64x64 PNG of entry ``i`` of ``database`` (index images are re-read and resized
        from the path stored in the index, never from a path in a request)."""
        searcher = self.ood if database == "ood" else self.index
        assert searcher is not None
        try:
            return png_bytes(searcher.image(i))
        except NeuralCodesError as e:
            raise UploadRejected(404, f"index image {i} is no longer readable ({e})") from None

    # -- search ---------------------------------------------------------------------------------

    def search_ood_item(self, i: int, k: int) -> dict[str, Any]:
        """Ood image ``i`` against the other ood images: top ``k`` and AP per layer."""
        from neuralcodes.metrics import ranking_metrics

        query_label = int(self.labels[i])
        layers = []
        for layer in self.layers:
            db = self.ood.codes.layers[layer]
            m = ranking_metrics(db[i:i + 1], db, self.labels[i:i + 1], self.labels,
                                exclude=np.array([i]), ks=(), top_k=k)
            ap = float(m.ap[0])
            hits = [self._hit(self.item(int(j)), rank, float(s), query_label)
                    for rank, (j, s) in enumerate(zip(m.top[0], m.top_scores[0], strict=True), 1)]
            layers.append({"layer": layer, "ap": None if np.isnan(ap) else ap, "hits": hits})
        return {"query": {**self.item(i), "source": "ood"}, "database": "ood",
                "database_size": len(self) - 1, "k": k, "layers": layers}

    def search_image(self, image: np.ndarray, k: int, database: str) -> dict[str, Any]:
        """A 64x64 uint8 image against ``database`` ("ood" or "index"): top ``k`` per layer."""
        from neuralcodes.codes import extract_code_variants
        from neuralcodes.retrieval import exact_top_k

        if database not in ("ood", "index"):
            raise UploadRejected(400, f"unknown database '{database}' (choose ood or index)")
        searcher = self.ood if database == "ood" else self.index
        if searcher is None:
            raise UploadRejected(400, "no index is loaded (start `neuralcodes serve` with "
                                 "--index to search one)")
        with self._model_lock:  # one forward pass at a time
            query = extract_code_variants(self.ood.run.model, np.array(image)[None], self.layers,
                                          (searcher.relu,), device=None,
                                          progress=False)[searcher.relu]
        layers = []
        for layer in self.layers:
            q = query[layer]
            if database == "ood":  # the NumPy reference ranking: no copy of the ood codes
                ids = exact_top_k(q, searcher.codes.layers[layer], k)[0]
                scores = (searcher.codes.layers[layer][ids] @ q[0]).tolist()
                items = [self.item(int(j)) for j in ids]
            else:  # the index's own (FAISS) search
                score_rows, id_rows = searcher.index(layer).search(q, k)
                keep = id_rows[0] >= 0
                scores = score_rows[0][keep].tolist()
                items = [self.index_item(int(j)) for j in id_rows[0][keep]]
            hits = [self._hit(item, rank, s, None)
                    for rank, (item, s) in enumerate(zip(items, scores, strict=True), 1)]
            layers.append({"layer": layer, "ap": None, "hits": hits})
        return {"query": {"id": None, "source": "upload"}, "database": database,
                "database_size": len(searcher.codes), "k": k, "layers": layers}

    def _hit(self, item: dict[str, Any], rank: int, score: float, query_label: int | None
             ) -> dict[str, Any]:
        same = None if query_label is None else item["label"] == query_label
        return {**item, "rank": rank, "score": score, "same_class": same}

    # -- results --------------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        """The run's evaluation table, mAP per layer and whether learning curves exist."""
        eval_ = read_json(self.run.eval_json) if self.run.eval_json.is_file() else None
        maps, source = self._saved_map()
        if maps is None:
            maps, source = self._computed_map(), "computed by the server from the ood codes"
        return {"run": self.run.root.name, "eval": eval_, "map": maps, "map_source": source,
                "curves_url": "api/curves.png" if self.run.curves.is_file() else None}

    def _saved_map(self) -> tuple[list[dict[str, Any]] | None, str]:
        """mAP rows from ``retrieval/map.json`` (``{"pre"|"post": {layer: {"map", ...}}}``)."""
        path = self.run.retrieval / "map.json"
        if not path.is_file():
            return None, ""
        rows = [{"layer": layer, "relu": variant == "post", "map": m["map"],
                 "p@5": m.get("p@5"), "n_queries": m.get("n_queries", len(self))}
                for variant, layers in sorted(read_json(path).items(), reverse=True)
                for layer, m in sorted(layers.items())]
        return (rows or None), f"{self.run.root.name}/retrieval/map.json"

    def _computed_map(self) -> list[dict[str, Any]]:
        from neuralcodes.retrieval import evaluate_codes

        with self._map_lock:  # computed once, on first request
            if self._map is None:
                ks = (5,) if len(self) > 5 else ()
                metrics = evaluate_codes(self.ood.codes, ks=ks, top_k=0)
                self._map = [{"layer": layer, "relu": self.ood.relu, "map": m.map,
                              "p@5": float(m.precision[5].mean()) if ks else None,
                              "n_queries": len(self)}
                             for layer, m in metrics.items() if layer in self.layers]
        return self._map


# --------------------------------------------------------------------------- the app


def create_app(run_dir: str | Path, index: str | Path | None = None, *, device: str = "auto",
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, allowed_hosts: list[str] | None = None,
               progress: bool = False) -> Any:
    """The FastAPI app serving the trained run ``run_dir`` (and an index from ``neuralcodes
    index``, if given). The run's ood codes are computed and saved first if missing (with a
    progress bar if ``progress``). ``allowed_hosts``: the only ``Host`` headers answered (None:
    any); ``serve`` on a loopback address allows only local names, so that a web page cannot
    reach the app through DNS rebinding."""
    from fastapi import FastAPI, File, Form, HTTPException, Query, UploadFile
    from fastapi import Path as PathParam
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles

    from neuralcodes import __version__

    retrieval = Retrieval(run_dir, index, device=device, progress=progress)
    n = len(retrieval)
    max_k = max(1, min(MAX_K, n - 1))
    static = resources.files("neuralcodes") / STATIC
    app = FastAPI(
        title="neuralcodes", version=__version__, docs_url=None, redoc_url=None,
        description="Query-by-example image retrieval with the neural codes (layers 5, 6, 7) "
        f"of the trained run `{retrieval.run.root.name}`. Images are addressed by their "
        "integer id in the out-of-domain set.")
    from neuralcodes import websecurity  # imgsec hook

    app.add_middleware(BodyLimit, limit=max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(websecurity.SameOriginPost)  # imgsec hook: cross-site POST -> 403
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.add_middleware(websecurity.SecurityHeaders)  # imgsec hook: outermost, on every answer
    limiter = websecurity.DecodeLimiter(slots=2, wait_s=10.0)  # imgsec hook
    limiter.install(app)  # imgsec hook: Busy -> 503 + Retry-After
    app.state.decode_limiter = limiter  # imgsec hook
    app.state.retrieval = retrieval
    n_index = 0 if retrieval.index is None else len(retrieval.index.codes)
    ImageId = PathParam(ge=0, lt=n, description=f"an ood image id, 0 to {n - 1}")
    IndexId = PathParam(ge=0, lt=max(n_index, 1), description="an index entry id")
    K = Query(retrieval.k, ge=1, le=max_k, description="results per layer")

    @app.get("/", include_in_schema=False)
    def home() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/api/info", summary="The run, its layers and the searchable databases",
             response_model=Info)
    def info() -> dict[str, Any]:
        return {"run": retrieval.run.root.name, "layers": list(retrieval.layers),
                "relu": retrieval.ood.relu, "k": min(retrieval.k, max_k), "max_k": max_k,
                "gallery_size": n, "databases": retrieval.databases(),
                "classes": [{"label": int(c), "wnid": retrieval.dataset.wnids[c],
                             "class_name": retrieval.dataset.names[c]}
                            for c in retrieval.ood_classes],
                "upload_formats": sorted(UPLOAD_FORMATS.values()),
                "max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}

    @app.get("/api/gallery", summary="A page of the out-of-domain images",
             response_model=Gallery)
    def gallery(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)
                ) -> dict[str, Any]:
        items = [retrieval.item(i) for i in range(offset, min(offset + limit, n))]
        return {"total": n, "offset": offset, "limit": limit, "items": items}

    @app.get("/api/image/{image_id}", summary="An ood image as a 64x64 PNG",
             response_class=Response,
             responses={200: {"content": {"image/png": {}}, "description": "PNG image"}})
    def image(image_id: int = ImageId) -> Response:
        return Response(retrieval.thumbnail("ood", image_id), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/index-image/{image_id}", summary="An image of the index as a 64x64 PNG",
             response_class=Response,
             responses={200: {"content": {"image/png": {}}, "description": "PNG image"},
                        404: {"description": "no index loaded, or its file is gone"}})
    def index_image(image_id: int = IndexId) -> Response:
        if retrieval.index is None:
            raise HTTPException(404, "no index is loaded (start `neuralcodes serve` with --index)")
        try:
            png = retrieval.thumbnail("index", image_id)
        except UploadRejected as e:
            raise HTTPException(e.status, e.detail) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/search/{image_id}", summary="Search the other ood images with ood image id",
             response_model=SearchResult)
    def search_id(image_id: int = ImageId, k: int = K) -> dict[str, Any]:
        return retrieval.search_ood_item(image_id, k)

    @app.post("/api/search", summary="Search with an uploaded JPEG, PNG or WebP image",
              response_model=SearchResult,
              responses={400: {"description": "empty, corrupt or truncated image"},
                         413: {"description": "too many bytes or pixels"},
                         415: {"description": "not a JPEG, PNG or WebP image"}})
    def search_upload(
        file: UploadFile = File(description="a JPEG, PNG or WebP image of any size"),
        k: int = Form(retrieval.k, ge=1, le=max_k, description="results per layer"),
        database: str = Form("ood", description="ood, or index (with serve --index)"),
    ) -> dict[str, Any]:
        data = file.file.read(max_upload_bytes + 1)
        try:
            if len(data) > max_upload_bytes:
                raise UploadRejected(413, f"file too large (limit {max_upload_bytes:,} bytes)")
            with limiter.slot():  # imgsec hook: at most 2 decodes at a time
                image, meta = decode_upload(data, max_pixels)  # imgsec hook (indented)
            result = retrieval.search_image(image, k, database)
        except UploadRejected as e:
            raise HTTPException(e.status, e.detail) from None
        preview = "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()
        result["query"].update(meta, filename=file.filename, url=preview)
        return result

    @app.get("/api/results", summary="Evaluation table, mAP per layer, learning curves",
             response_model=Results)
    def results() -> dict[str, Any]:
        return retrieval.results()

    @app.get("/api/curves.png", summary="The learning curves of the run", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "none yet"}})
    def curves() -> FileResponse:
        if not retrieval.run.curves.is_file():
            raise HTTPException(404, "this run has no curves.png yet")
        return FileResponse(retrieval.run.curves, media_type="image/png")

    return app


# --------------------------------------------------------------------------- command line


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand."""
    p = subparsers.add_parser(
        "serve", help="a local web app: browse the ood images and search with your own",
        description="Start a web app for a trained run: a gallery of the out-of-domain images "
        "with their top-k results per layer, search with an uploaded image, the run's results, "
        "and a JSON API (schema at /openapi.json). Binds 127.0.0.1 unless --host says otherwise.")
    p.add_argument("run", help="run directory (runs/<name>)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, "
                   "this machine only; 0.0.0.0 exposes the app to the network)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--index", metavar="PATH", help="an index built by `neuralcodes index`, "
                   "searchable with uploaded images besides the ood set")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or mps")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20,
                   help="largest accepted upload in MiB (default: %(default)g)")
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                   help="largest accepted upload in megapixels (default: %(default)g)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if not 0 < args.port < 65536:
        raise NeuralCodesError(f"--port must be between 1 and 65535 (got {args.port})")
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise NeuralCodesError("--max-upload-mb and --max-megapixels must be positive")
    _check_can_listen(args.host, args.port)  # before the (slow) loading, not after
    print(f"neuralcodes: loading {args.run} ...", flush=True)
    app = create_app(args.run, args.index, device=args.device,
                     max_upload_bytes=int(args.max_upload_mb * 2**20),
                     max_pixels=int(args.max_megapixels * 1e6),
                     allowed_hosts=LOCAL_HOSTS if _is_loopback(args.host) else None,
                     progress=True)
    print(f"neuralcodes: serving {args.run} on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _check_can_listen(host: str, port: int) -> None:
    """Fail with one clear line if ``host:port`` cannot be bound (in use, unknown address)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as e:
        raise NeuralCodesError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
