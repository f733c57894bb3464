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
- **Your photos** (``serve --index NAME``): the index's images by folder and name, in pages;
  clicking one ranks the index by it; each links to its original file and its folder
  (:mod:`neuralcodes.web.collection`).
- **Results**: the train/val/test table (``eval.json``), mAP per layer, the learning curves.
- **JSON API** under ``/api/``, described by the OpenAPI schema at ``/openapi.json``.

The routes are in :mod:`neuralcodes.web.routes`, one ``APIRouter`` per area; :func:`create_app`
builds what they serve and wires them with the middleware. (FastAPI is imported inside
:func:`create_app`, so ``serve --help`` stays fast.)

Safety: images are addressed by integer ids only, so no path from a request ever reaches the
file system (an index's originals are served only from inside its indexed folder); request
bodies, upload bytes and pixels are capped (decompression bombs are refused from the image
header, before decoding); anything that is not a readable JPEG, PNG or WebP gets a
4xx answer with a one-line ``detail``. ``serve`` binds 127.0.0.1 unless told otherwise, and
then answers only requests addressed to a local host name (no DNS rebinding).
"""

import contextlib
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from neuralcodes.config import Config, RetrievalConfig, ServeConfig
from neuralcodes.kernels.cpu import return_freed_memory
from neuralcodes.runs import RunDir, TrainedRun
from neuralcodes.text import printable
from neuralcodes.web.middleware import (
    MULTIPART_OVERHEAD,
    BodyBudget,
    Budget,
    TokenAuth,
    add_host_check,
)
from neuralcodes.web.security import (
    DecodeLimiter,
    SameOriginPost,
    SecurityHeaders,
    install_file_names_only,
)
from neuralcodes.web.service import ServedRun, freeze_loaded_objects
from neuralcodes.web.uploads import UploadDecoder, UploadStore

MB = 2**20


def open_run(run: TrainedRun | str | Path, settings: RetrievalConfig | None = None,
             device: str | None = None, precision: str | None = None,
             progress: bool = False) -> TrainedRun:
    """``run`` itself, or the run at that path opened with ``settings`` (its retrieval
    section), ``device`` and ``precision`` (None: the run's own) in its config."""
    if isinstance(run, TrainedRun):
        return run
    config = None
    if settings is not None:
        config = Config.from_dict({**RunDir.existing(run).read_config().to_dict(),
                                   "retrieval": dataclasses.asdict(settings)})
    return TrainedRun.open(run, config, device=device, precision=precision, progress=progress)


def create_app(run: TrainedRun | str | Path, index: str | Path | None = None, *,
               device: str | None = None, precision: str | None = None,
               max_upload_bytes: int | None = None, max_pixels: int | None = None,
               allowed_hosts: list[str] | None = None, settings: RetrievalConfig | None = None,
               serve: ServeConfig | None = None, token: str | None = None, warm: bool = False,
               progress: bool = False) -> Any:
    """The FastAPI app serving the trained run ``run`` (opened: its config rules; or a path:
    :func:`open_run` with ``settings``, ``device``, ``precision``) and an index from
    ``neuralcodes index``, if given; its ood codes computed first if missing (a progress bar if
    ``progress``). ``allowed_hosts``: the only ``Host`` headers answered (None: any). ``serve``:
    the limits (``max_upload_bytes`` and ``max_pixels`` override two). ``token``: every route
    then needs it. ``warm``: start the decoders with the app (a server), not on first upload."""
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline

    from neuralcodes import __version__
    from neuralcodes.web import routes

    limits = serve or ServeConfig()
    served = ServedRun(open_run(run, settings, device, precision, progress), index)
    return_freed_memory()  # a server: memory goes back after a burst (see kernels.cpu)
    decoder = _decoder(limits, max_upload_bytes, max_pixels)
    # /docs with its scripts served from the fastapi-offline package (no CDN); /redoc leads
    # there (the bundled ReDoc still fetches its logo from a CDN)
    app = FastAPIOffline(
        title="neuralcodes", version=__version__, static_url="/static-docs", redoc_url=None,
        favicon_url="/static/favicon.svg", lifespan=_lifespan(decoder, warm),
        description=f"Query-by-example image retrieval with the neural codes (layers "
        f"{', '.join(served.layers)}) of the trained run `{printable(served.run.root.name)}`. "
        "Images are addressed by their integer id in the out-of-domain set.")
    _protect(app, limits, decoder, allowed_hosts, token)
    install_file_names_only(app, served.folders)  # no server folder in any detail
    app.state.retrieval = served
    for router in (routes.pages(), routes.gallery(served, decoder), routes.search(served),
                   routes.collection(served),
                   routes.uploads(served, decoder, UploadStore(), limits),
                   routes.results(served)):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(routes.STATIC)), name="static")
    return app


def _decoder(limits: ServeConfig, max_upload_bytes: int | None, max_pixels: int | None
             ) -> UploadDecoder:
    """The upload decoder: at most ``decode_workers`` decodes at a time, each in a killable
    worker process, within the upload limits (the arguments, else ``limits``')."""
    limiter = DecodeLimiter(slots=limits.decode_workers, wait_s=limits.decode_wait_s)
    return UploadDecoder(
        limiter, max_scans=limits.max_jpeg_scans, timeout_s=limits.decode_timeout_s,
        max_bytes=(int(limits.max_upload_mb * MB) if max_upload_bytes is None
                   else max_upload_bytes),
        max_pixels=int(limits.max_megapixels * 1e6) if max_pixels is None else max_pixels)


def _lifespan(decoder: UploadDecoder, warm: bool) -> Callable[[Any], Any]:
    """Start the decoder's processes with the app when ``warm``; stop them with it."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        if warm:  # a server: loaded for good; the decoders start in the background
            freeze_loaded_objects()
            threading.Thread(target=decoder.pool.warm, daemon=True).start()
        try:
            yield
        finally:
            decoder.close()

    return lifespan


def _protect(app: Any, limits: ServeConfig, decoder: UploadDecoder,
             allowed_hosts: list[str] | None, token: str | None) -> None:
    """The middleware, outermost last: request body budget, same-origin POSTs, the token, the
    Host check, the security headers (on every answer, errors included); 503 when busy."""
    upload = decoder.max_bytes
    budget = Budget(max(int(limits.inflight_mb * MB), upload + MULTIPART_OVERHEAD))
    app.add_middleware(BodyBudget, limit=upload + MULTIPART_OVERHEAD, upload_limit=upload,
                       budget=budget, idle_s=limits.body_timeout_s)
    app.add_middleware(SameOriginPost)  # a cross-site POST gets 403
    if token is not None:
        app.add_middleware(TokenAuth, token=token)
    add_host_check(app, allowed_hosts)
    app.add_middleware(SecurityHeaders)  # outermost: on every answer, errors included
    decoder.limiter.install(app)  # Busy -> 503 with Retry-After
    app.state.decode_limiter = decoder.limiter
    app.state.decoder = decoder
    app.state.body_budget = budget
