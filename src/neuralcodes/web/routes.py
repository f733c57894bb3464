"""The web app's routes, one FastAPI ``APIRouter`` per area, each made by a function of what
its routes need, so that any one can be mounted on an app of its own (and tested alone):

- :func:`pages`: the page (``/``), its icon, ``/redoc``;
- :func:`gallery`: ``/api/info``, pages of the ood images, the images of the ood set and index;
- :func:`search`: search the ood set with one of its images;
- :func:`collection`: the served index (your own images): pages of it by folder and name,
  search with one of its images, its original files;
- :func:`uploads`: search with an uploaded image, and again with an earlier upload;
- :func:`results`: the results table, the run's figures and learning curves, ``report.html``.

(No ``from __future__ import annotations``: FastAPI resolves the endpoint annotations. This
module imports FastAPI: :func:`neuralcodes.web.app.create_app` imports it only when called.)
"""

import base64
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from neuralcodes.config import ServeConfig
from neuralcodes.report.render import style_hashes
from neuralcodes.text import printable
from neuralcodes.web.results import REPORT_COMMAND, figure_path, run_results
from neuralcodes.web.schemas import CollectionPage, Gallery, Info, Results, SearchResult
from neuralcodes.web.security import CSP
from neuralcodes.web.service import MAX_K, POOLING, ServedRun
from neuralcodes.web.uploads import (
    UPLOAD_FORMATS,
    UploadDecoder,
    UploadRejected,
    UploadStore,
    format_bytes,
    png_bytes,
)

#: The page, its script, style and icon.
STATIC = resources.files("neuralcodes.web") / "static"
_PNG = {200: {"content": {"image/png": {}}, "description": "PNG image"}}
_CACHED = {"Cache-Control": "max-age=3600"}


def max_k(served: ServedRun) -> int:
    """The most results per layer the app gives: :data:`MAX_K`, or fewer in a small ood set."""
    return max(1, min(MAX_K, len(served) - 1))


def _image_id(served: ServedRun) -> Any:
    return PathParam(ge=0, lt=len(served), description=f"an ood image id, 0 to {len(served) - 1}")


def _k(served: ServedRun) -> Any:
    return Query(served.k, ge=1, le=max_k(served), description="results per layer")


def pages() -> APIRouter:
    """The single-page app, its icon, and ``/redoc`` (which leads to ``/docs``)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def home() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @router.get("/redoc")
    def redoc() -> RedirectResponse:
        return RedirectResponse("docs")

    @router.get("/favicon.ico")
    def favicon() -> FileResponse:
        return FileResponse(str(STATIC / "favicon.svg"), media_type="image/svg+xml")

    return router


def gallery(served: ServedRun, decoder: UploadDecoder) -> APIRouter:
    """What the run serves (``/api/info``), pages of the ood images, and the images."""
    router = APIRouter(prefix="/api")
    n_index = 0 if served.index is None else len(served.index)
    index_id = PathParam(ge=0, lt=max(n_index, 1), description="an index entry id")

    @router.get("/info", summary="The run, its layers and the searchable databases",
                response_model=Info)
    def info() -> dict[str, Any]:
        return {"run": served.run.root.name, "layers": list(served.layers),
                "relu": served.ood.relu, "k": min(served.k, max_k(served)),
                "max_k": max_k(served), "gallery_size": len(served),
                "databases": served.databases(),
                "classes": [{"label": int(c), "wnid": served.dataset.wnids[c],
                             "class_name": served.dataset.names[c]}
                            for c in served.ood_classes],
                "methods": POOLING,
                "upload_formats": sorted(UPLOAD_FORMATS.values()),
                "max_upload_bytes": decoder.max_bytes,
                "max_upload_text": format_bytes(decoder.max_bytes),
                "max_pixels": decoder.max_pixels}

    @router.get("/gallery", summary="A page of the out-of-domain images", response_model=Gallery)
    def page(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
             label: int | None = Query(None, description="only this class (a label of "
                                       "/api/info's classes)")) -> dict[str, Any]:
        if label is not None and label not in served.ood_classes:
            raise HTTPException(422, f"no ood class has label {label}")
        return served.gallery(offset, limit, label)

    @router.get("/image/{image_id}", summary="An ood image as a 64x64 PNG",
                response_class=Response, responses=_PNG)
    def image(image_id: int = _image_id(served)) -> Response:
        return Response(served.thumbnail("ood", image_id), media_type="image/png",
                        headers=_CACHED)

    @router.get("/index-image/{image_id}", summary="An image of the index as a 64x64 PNG",
                response_class=Response,
                responses={**_PNG, 404: {"description": "no index loaded, or its file is gone"}})
    def index_image(image_id: int = index_id) -> Response:
        if served.index is None:
            raise HTTPException(404, "no index is loaded (start `neuralcodes serve` with --index)")
        try:
            png = served.thumbnail("index", image_id)
        except UploadRejected as e:
            raise HTTPException(e.status, e.detail) from None
        return Response(png, media_type="image/png", headers=_CACHED)

    return router


def search(served: ServedRun) -> APIRouter:
    """Search the other ood images with one of them (the study's protocol)."""
    router = APIRouter(prefix="/api")

    method_doc = f"a pooling method of the conv5 map: {', '.join(POOLING)}"

    @router.get("/search/{image_id}", summary="Search the other ood images with ood image id",
                response_model=SearchResult)
    def search_id(image_id: int = _image_id(served), k: int = _k(served),
                  method: str | None = Query(None, description="also rank by a pooled "
                                             "descriptor: " + method_doc)) -> dict[str, Any]:
        try:
            return served.search_ood_item(image_id, k, method)
        except UploadRejected as e:
            raise HTTPException(e.status, e.detail) from None

    @router.get("/why/{image_id}/{hit_id}.png", summary="Why two ood images are similar under "
                "a pooled descriptor: each conv5 cell's share of the score",
                response_class=Response, responses=_PNG)
    def why(image_id: int = _image_id(served), hit_id: int = _image_id(served),
            method: str = Query(description=method_doc)) -> Response:
        try:
            png = served.why_png(image_id, hit_id, method)
        except UploadRejected as e:
            raise HTTPException(e.status, e.detail) from None
        return Response(png, media_type="image/png", headers=_CACHED)

    return router


def collection(served: ServedRun) -> APIRouter:
    """The served index as a gallery: pages by folder and name, search with one of its
    images, and its original files (from inside the indexed folder only)."""
    router = APIRouter(prefix="/api")
    mine = served.collection
    n = 0 if mine is None else len(mine)
    entry = PathParam(ge=0, lt=max(n, 1), description="an index entry id")
    missing = {404: {"description": "no index loaded (serve --index), or its file is gone"}}

    def loaded() -> Any:
        if mine is None:
            raise HTTPException(404, "no index is loaded (start `neuralcodes serve` with "
                                "--index NAME to browse one)")
        return mine

    @router.get("/collection", summary="A page of your images (the served index)",
                response_model=CollectionPage, responses=missing)
    def page(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
             folder: str | None = Query(None, max_length=4096, description="only this folder "
                                        "(relative to the indexed one; \"\" for it)"),
             q: str | None = Query(None, max_length=200, description="only images whose "
                                   "folder or file name holds this text (any case)")
             ) -> dict[str, Any]:
        return loaded().page(offset, limit, folder, q)

    @router.get("/index-search/{image_id}", summary="Search the index with one of its images",
                response_model=SearchResult, responses=missing)
    def search_entry(image_id: int = entry, k: int = Query(
            served.k, ge=1, le=MAX_K, description="results per layer")) -> dict[str, Any]:
        return loaded().search_item(image_id, k, served.layers)

    @router.get("/original/{image_id}", summary="The original file of an index image",
                response_class=Response, responses=missing)
    def original(image_id: int = entry) -> Response:
        try:
            path, media, name = loaded().original(image_id)
        except UploadRejected as e:
            raise HTTPException(e.status, e.detail) from None
        how = "inline" if media.startswith("image/") else "attachment"
        return FileResponse(path, media_type=media, headers={
            **_CACHED, "Content-Disposition": f"{how}; filename*=utf-8''{quote(name)}"})

    return router


def uploads(served: ServedRun, decoder: UploadDecoder, store: UploadStore,
            limits: ServeConfig) -> APIRouter:
    """Search with an uploaded image (decoded by ``decoder`` within ``limits``), and again with
    one of the latest uploads (kept in ``store``)."""
    router = APIRouter(prefix="/api")

    @router.post("/search", summary="Search with an uploaded JPEG, PNG or WebP image",
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
        k: int = Form(served.k, ge=1, le=max_k(served), description="results per layer"),
        database: str = Form("ood", description="ood, or index (with serve --index)"),
    ) -> dict[str, Any]:
        try:
            image, meta = await decoder.decode(file, request.is_disconnected)
            result = await run_in_threadpool(served.search_image, image, k, database)
        except UploadRejected as e:
            raise HTTPException(e.status, e.detail) from None
        name = None if file.filename is None else printable(file.filename)
        meta = {**meta, "filename": name,
                "url": "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()}
        meta["upload_id"] = store.add(image, meta)
        result["query"].update(meta)
        return result

    @router.get("/upload/{upload_id}", summary="Search again with an earlier upload",
                response_model=SearchResult,
                responses={404: {"description": "not among the latest uploads (send it again)"}})
    def search_again(upload_id: str = PathParam(pattern="^[0-9a-f]{16}$"), k: int = _k(served),
                     database: str = Query("ood", description="ood, or index")
                     ) -> dict[str, Any]:
        try:
            image, meta = store.get(upload_id)
            result = served.search_image(image, k, database)
        except UploadRejected as e:
            raise HTTPException(e.status, e.detail) from None
        result["query"].update(meta)
        return result

    return router


def results(served: ServedRun) -> APIRouter:
    """The run's results (evaluation, mAP per layer, chance levels), figures and report."""
    router = APIRouter()

    @router.get("/api/results", summary="Evaluation table, mAP per layer, learning curves",
                response_model=Results)
    def table() -> dict[str, Any]:
        return run_results(served)

    @router.get("/api/figure/{name}.png", summary="One of the run's figures (see /api/results)",
                response_class=Response, responses={**_PNG, 404: {"description": "none"}})
    def figure(name: str) -> FileResponse:
        path = figure_path(served, name)
        if path is None:
            raise HTTPException(404, f"this run has no figure '{name}'")
        return FileResponse(path, media_type="image/png")

    @router.get("/api/curves.png", summary="The learning curves of the run",
                response_class=Response, responses={**_PNG, 404: {"description": "none yet"}})
    def curves() -> FileResponse:
        if not served.run.curves.is_file():
            raise HTTPException(404, "this run has no curves.png yet")
        return FileResponse(served.run.curves, media_type="image/png")

    @router.get("/report.html", include_in_schema=False)
    def report() -> Response:
        if not served.run.report_html.is_file():
            raise HTTPException(404, f"this run has no report.html yet: `{REPORT_COMMAND}` "
                                "writes it (RUN: the run's folder)")
        # one self-contained page: its own inline style (allowed by hash, nothing else
        # inline), its figures as data: URLs, no script at all
        page = served.run.report_html.read_text(encoding="utf-8")
        policy = CSP.replace("style-src 'self'", "style-src 'self' " + " ".join(
            style_hashes(page))).replace("script-src 'self'", "script-src 'none'")
        return Response(page, media_type="text/html",
                        headers={"Content-Security-Policy": policy})

    return router
