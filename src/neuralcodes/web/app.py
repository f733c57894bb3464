"""``neuralcodes serve``'s app: :func:`create_app` and its routes.

Pages (plain HTML/JS in ``static/``, no build step, nothing loaded from elsewhere):

- **Gallery** of the out-of-domain images; clicking one ranks the other ood images by the cosine
  similarity of their layer 5, 6 and 7 codes and shows the top k per layer side by side, each
  marked same class or not, with its similarity and the query's average precision per layer.
  This is exactly the study's protocol (query excluded by its index, ties broken by index:
  :func:`neuralcodes.retrieval.metrics.ranking_metrics`).
- **Search with your image**: an uploaded JPEG/PNG/WebP of any size is resized to 64x64, the
  training images' size, without keeping its aspect ratio (as ``neuralcodes index`` treats its
  images), and searched in the ood set or in an index built by ``neuralcodes index``.
- **Results**: the train/val/test table (``eval.json``), mAP per layer, the learning curves.
- **JSON API** under ``/api/``, described by the OpenAPI schema at ``/openapi.json``.

(No ``from __future__ import annotations`` here: FastAPI resolves the endpoint annotations, and
FastAPI itself is imported inside :func:`create_app`, so ``serve --help`` stays fast.)

Safety: images are addressed by integer ids only, so no path from a request ever reaches the
file system; request bodies, upload bytes and pixels are capped (decompression bombs are refused
from the image header, before decoding); anything that is not a readable JPEG, PNG or WebP gets a
4xx answer with a one-line ``detail``. ``serve`` binds 127.0.0.1 unless told otherwise, and
then answers only requests addressed to a local host name (no DNS rebinding).
"""

import base64
import contextlib
import threading
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from neuralcodes.config import RetrievalConfig, ServeConfig
from neuralcodes.kernels.cpu import return_freed_memory
from neuralcodes.report.render import style_hashes
from neuralcodes.text import printable
from neuralcodes.web.middleware import (
    MULTIPART_OVERHEAD,
    BodyBudget,
    Budget,
    TokenAuth,
    add_host_check,
)
from neuralcodes.web.results import figure_path, run_results
from neuralcodes.web.schemas import Gallery, Info, Results, SearchResult
from neuralcodes.web.security import CSP, DecodeLimiter, SameOriginPost, SecurityHeaders
from neuralcodes.web.service import MAX_K, ServedRun
from neuralcodes.web.uploads import (
    UPLOAD_FORMATS,
    UploadDecoder,
    UploadRejected,
    UploadStore,
    format_bytes,
    png_bytes,
)

MB = 2**20


def create_app(run_dir: str | Path, index: str | Path | None = None, *, device: str = "auto",
               precision: str | None = None, max_upload_bytes: int | None = None,
               max_pixels: int | None = None, allowed_hosts: list[str] | None = None,
               settings: RetrievalConfig | None = None, serve: ServeConfig | None = None,
               token: str | None = None, warm: bool = False, progress: bool = False) -> Any:
    """The FastAPI app serving the trained run ``run_dir`` (and an index from ``neuralcodes
    index``, if given). The run's ood codes are computed and saved first if missing (with a
    progress bar if ``progress``). ``allowed_hosts``: the only ``Host`` headers answered (None:
    any); ``serve`` on a loopback address allows only local names, so that a web page cannot
    reach the app through DNS rebinding. ``settings``: the retrieval settings to serve with
    (layers, k, pre/post-ReLU; default: the run's own). ``precision`` None: the run's own.
    ``serve``: the limits (:class:`neuralcodes.config.ServeConfig`; ``max_upload_bytes`` and
    ``max_pixels`` override two of them). ``token``: every route then needs it
    (:class:`neuralcodes.web.middleware.TokenAuth`). ``warm``: start the decoder processes
    with the app (a server), not on the first upload."""
    from fastapi import File, Form, HTTPException, Query, Request, UploadFile
    from fastapi import Path as PathParam
    from fastapi.responses import FileResponse, RedirectResponse, Response
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline
    from starlette.concurrency import run_in_threadpool

    from neuralcodes import __version__

    limits = serve or ServeConfig()
    max_upload_bytes = (int(limits.max_upload_mb * MB) if max_upload_bytes is None
                        else max_upload_bytes)
    max_pixels = int(limits.max_megapixels * 1e6) if max_pixels is None else max_pixels
    retrieval = ServedRun(run_dir, index, device=device, precision=precision,
                          settings=settings, progress=progress)
    return_freed_memory()  # a server: memory goes back after a burst (see kernels.cpu)
    n = len(retrieval)
    max_k = max(1, min(MAX_K, n - 1))
    static = resources.files("neuralcodes.web") / "static"
    uploads = UploadStore()
    # at most `decode_workers` decodes at a time, each in a killable worker process
    limiter = DecodeLimiter(slots=limits.decode_workers, wait_s=limits.decode_wait_s)
    decoder = UploadDecoder(limiter, max_bytes=max_upload_bytes, max_pixels=max_pixels,
                            max_scans=limits.max_jpeg_scans, timeout_s=limits.decode_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        if warm:  # in the background: the server answers at once
            threading.Thread(target=decoder.pool.warm, daemon=True).start()
        try:
            yield
        finally:
            decoder.close()

    # /docs with its scripts served from the fastapi-offline package (no CDN); /redoc leads
    # there (the bundled ReDoc still fetches its logo from a CDN)
    app = FastAPIOffline(
        title="neuralcodes", version=__version__, static_url="/static-docs", redoc_url=None,
        favicon_url="/static/favicon.svg", lifespan=lifespan,
        description="Query-by-example image retrieval with the neural codes (layers 5, 6, 7) "
        f"of the trained run `{printable(retrieval.run.root.name)}`. Images are addressed by "
        "their integer id in the out-of-domain set.")
    budget = Budget(max(int(limits.inflight_mb * MB), max_upload_bytes + MULTIPART_OVERHEAD))
    app.add_middleware(BodyBudget, limit=max_upload_bytes + MULTIPART_OVERHEAD,
                       upload_limit=max_upload_bytes, budget=budget,
                       idle_s=limits.body_timeout_s)
    app.add_middleware(SameOriginPost)  # a cross-site POST gets 403
    if token is not None:
        app.add_middleware(TokenAuth, token=token)
    add_host_check(app, allowed_hosts)
    app.add_middleware(SecurityHeaders)  # outermost: on every answer, errors included
    limiter.install(app)  # Busy -> 503 with Retry-After
    app.state.decode_limiter = limiter
    app.state.decoder = decoder
    app.state.body_budget = budget
    app.state.retrieval = retrieval
    n_index = 0 if retrieval.index is None else len(retrieval.index)
    ImageId = PathParam(ge=0, lt=n, description=f"an ood image id, 0 to {n - 1}")
    IndexId = PathParam(ge=0, lt=max(n_index, 1), description="an index entry id")
    K = Query(retrieval.k, ge=1, le=max_k, description="results per layer")

    @app.get("/", include_in_schema=False)
    def home() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> RedirectResponse:
        return RedirectResponse("docs")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(str(static / "favicon.svg"), media_type="image/svg+xml")

    @app.get("/report.html", include_in_schema=False)
    def report() -> Response:
        if not retrieval.run.report_html.is_file():
            raise HTTPException(404, "this run has no report.html yet: run `neuralcodes report`")
        # one self-contained page: its own inline style (allowed by hash, nothing else
        # inline), its figures as data: URLs, no script at all
        page = retrieval.run.report_html.read_text(encoding="utf-8")
        policy = CSP.replace("style-src 'self'", "style-src 'self' " + " ".join(
            style_hashes(page))).replace("script-src 'self'", "script-src 'none'")
        return Response(page, media_type="text/html",
                        headers={"Content-Security-Policy": policy})

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
                "max_upload_bytes": max_upload_bytes,
                "max_upload_text": format_bytes(max_upload_bytes), "max_pixels": max_pixels}

    @app.get("/api/gallery", summary="A page of the out-of-domain images",
             response_model=Gallery)
    def gallery(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                label: int | None = Query(None, description="only this class (a label of "
                                          "/api/info's classes)")) -> dict[str, Any]:
        if label is not None and label not in retrieval.ood_classes:
            raise HTTPException(422, f"no ood class has label {label}")
        return retrieval.gallery(offset, limit, label)

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
                         408: {"description": "the body stalled (no data for "
                               f"{limits.body_timeout_s:g} s)"},
                         413: {"description": "too many bytes, pixels or JPEG scans, or the "
                               f"decode took over {limits.decode_timeout_s:g} s"},
                         415: {"description": "not a JPEG, PNG or WebP image"},
                         503: {"description": "busy: retry after Retry-After seconds"}})
    async def search_upload(
        request: Request,
        file: UploadFile = File(description="a JPEG, PNG or WebP image of any size"),
        k: int = Form(retrieval.k, ge=1, le=max_k, description="results per layer"),
        database: str = Form("ood", description="ood, or index (with serve --index)"),
    ) -> dict[str, Any]:
        try:
            image, meta = await decoder.decode(file, request.is_disconnected)
            result = await run_in_threadpool(retrieval.search_image, image, k, database)
        except UploadRejected as e:
            raise HTTPException(e.status, e.detail) from None
        name = None if file.filename is None else printable(file.filename)
        meta = {**meta, "filename": name,
                "url": "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()}
        meta["upload_id"] = uploads.add(image, meta)
        result["query"].update(meta)
        return result

    @app.get("/api/upload/{upload_id}", summary="Search again with an earlier upload",
             response_model=SearchResult,
             responses={404: {"description": "not among the latest uploads (send it again)"}})
    def search_again(upload_id: str = PathParam(pattern="^[0-9a-f]{16}$"), k: int = K,
                     database: str = Query("ood", description="ood, or index")
                     ) -> dict[str, Any]:
        try:
            image, meta = uploads.get(upload_id)
            result = retrieval.search_image(image, k, database)
        except UploadRejected as e:
            raise HTTPException(e.status, e.detail) from None
        result["query"].update(meta)
        return result

    @app.get("/api/results", summary="Evaluation table, mAP per layer, learning curves",
             response_model=Results)
    def results() -> dict[str, Any]:
        return run_results(retrieval)

    @app.get("/api/figure/{name}.png", summary="One of the run's figures (see /api/results)",
             response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "none"}})
    def figure(name: str) -> FileResponse:
        path = figure_path(retrieval, name)
        if path is None:
            raise HTTPException(404, f"this run has no figure '{name}'")
        return FileResponse(path, media_type="image/png")

    @app.get("/api/curves.png", summary="The learning curves of the run", response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "none yet"}})
    def curves() -> FileResponse:
        if not retrieval.run.curves.is_file():
            raise HTTPException(404, "this run has no curves.png yet")
        return FileResponse(retrieval.run.curves, media_type="image/png")

    return app
