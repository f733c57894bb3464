"""Web app hardening, framework-agnostic (pure ASGI; only the 403/503 answers use Starlette):

- :class:`SecurityHeaders`: ``X-Content-Type-Options: nosniff``, a Content-Security-Policy
  that the app's own page (``/static`` files, images from ``/api`` and ``data:`` previews, no
  inline script or style) passes, ``frame-ancestors 'none'`` (no framing, no clickjacking).
- :class:`SameOriginPost`: a POST (PUT, PATCH, DELETE) from another site gets 403. The app
  binds localhost, but any web page the user visits could otherwise make the browser post to it.
  A request without ``Origin`` and ``Sec-Fetch-Site`` (curl, scripts) is allowed.
- :class:`DecodeLimiter`: at most ``slots`` image decodes at a time; others wait up to
  ``wait_s`` seconds and then get 503 with ``Retry-After`` (:class:`Busy`). Threads wait with
  :meth:`DecodeLimiter.slot`, coroutines with :meth:`DecodeLimiter.aslot` (which holds no
  thread while it waits, and stops waiting when its request is cancelled).
- :func:`install_file_names_only`: every error detail names files, never the server's folders.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neuralcodes.text import without_folders

log = logging.getLogger(__name__)


#: The policy for the app's page: everything from its own origin, upload previews as data: URLs.
CSP = ("default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
#: The API docs page (Swagger UI, served locally) starts itself with an inline script.
DOCS_CSP = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'")
DOCS_PATHS: tuple[str, ...] = ("/docs",)
HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class SecurityHeaders:
    """ASGI middleware: add :data:`HEADERS` to every HTTP response (a header the app set
    itself is kept)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str] | None = None) -> None:
        self.app = app
        chosen = HEADERS if headers is None else headers
        self.headers = [(k.lower().encode(), v.encode()) for k, v in chosen.items()]
        docs = {**chosen, "Content-Security-Policy": DOCS_CSP} if headers is None else chosen
        self.docs_headers = [(k.lower().encode(), v.encode()) for k, v in docs.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = any(scope.get("path", "").startswith(p) for p in DOCS_PATHS)
        headers = self.docs_headers if docs else self.headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in headers if k not in have]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin or URL; None if it is not one (e.g. ``null``)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS.get(scheme, 0)


def served_origin(scope: Scope) -> tuple[str, str, int] | None:
    """The origin the request was addressed to: its scheme and ``Host`` header."""
    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1")
    if not host:
        server = scope.get("server")
        if not server:
            return None
        host = f"[{server[0]}]:{server[1]}" if ":" in server[0] else f"{server[0]}:{server[1]}"
    return _origin_of(f"{scope.get('scheme', 'http')}://{host}")


def is_cross_site(scope: Scope, extra_origins: frozenset[tuple[str, str, int]] = frozenset()
                  ) -> bool:
    """Whether a request comes from a page of another origin (by ``Sec-Fetch-Site``, else by
    ``Origin``). A request with neither (curl, scripts) is not."""
    headers = dict(scope.get("headers") or [])
    fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
    origin = headers.get(b"origin")
    if origin is not None:
        theirs = _origin_of(origin.decode("latin-1"))
        return theirs is None or (theirs != served_origin(scope) and theirs not in extra_origins)
    return fetch_site not in ("", "same-origin", "none")


class SameOriginPost:
    """ASGI middleware: POST/PUT/PATCH/DELETE from another origin get 403 (GET, HEAD and
    OPTIONS pass: they change nothing, and no CORS header lets another page read answers).
    ``allowed_origins``: more origins to accept, e.g. ``["http://localhost:5173"]``."""

    def __init__(self, app: ASGIApp, allowed_origins: list[str] | None = None) -> None:
        self.app = app
        self.extra = frozenset(o for o in map(_origin_of, allowed_origins or []) if o)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] in UNSAFE_METHODS
                and is_cross_site(scope, self.extra)):
            from starlette.responses import JSONResponse

            log.warning("refused a cross-origin %s %s", scope["method"], scope.get("path"))
            response = JSONResponse({"detail": "cross-origin request refused: post from the "
                                     "app's own page, or without an Origin header"}, 403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Busy(Exception):
    """All decode slots stayed taken for the whole wait: answer 503 with ``Retry-After``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the server is busy decoding other images; retry in "
                         f"{retry_after_s} s")
        self.retry_after_s = retry_after_s


class Cancelled(Exception):
    """The request went away while it waited for a decode slot."""


class DecodeLimiter:
    """At most ``slots`` decodes at a time (threads: sync endpoints run in a thread pool).

    ``with limiter.slot(): ...`` waits up to ``wait_s`` for a slot, else raises :class:`Busy`;
    :meth:`install` makes a Starlette/FastAPI app answer :class:`Busy` with 503 and
    ``Retry-After``."""

    def __init__(self, slots: int = 2, wait_s: float = 10.0, retry_after_s: int = 2) -> None:
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots = slots
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self._sem = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self.active = 0  #: decodes running now
        self.peak = 0  #: most decodes that ever ran at once
        self.refused = 0  #: requests answered Busy

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a decode slot for the ``with`` block (see the class doc)."""
        if not self._sem.acquire(timeout=self.wait_s):
            with self._lock:
                self.refused += 1
            raise Busy(self.retry_after_s)
        with self._held():
            yield

    @contextmanager
    def _held(self) -> Iterator[None]:
        """Count an acquired slot as active for the block, then release it."""
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1
            self._sem.release()

    @asynccontextmanager
    async def aslot(self, cancel: threading.Event | None = None) -> AsyncIterator[None]:
        """:meth:`slot` for coroutines: polls every 20 ms instead of blocking a thread; gives
        up (:class:`Cancelled`) as soon as ``cancel`` is set."""
        deadline = time.monotonic() + self.wait_s
        while not self._sem.acquire(blocking=False):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if time.monotonic() >= deadline:
                with self._lock:
                    self.refused += 1
                raise Busy(self.retry_after_s)
            await asyncio.sleep(0.02)
        with self._held():
            yield

    def install(self, app: Any) -> None:
        """Answer :class:`Busy` with 503, ``Retry-After`` and a one-line ``detail``."""
        from starlette.responses import JSONResponse

        async def busy(request: Any, exc: Exception) -> JSONResponse:
            assert isinstance(exc, Busy)
            return JSONResponse({"detail": str(exc)}, 503,
                                headers={"Retry-After": str(exc.retry_after_s)})

        app.add_exception_handler(Busy, busy)


def install_file_names_only(app: Any, folders: list[Any] | None = None) -> None:
    """Answer every ``HTTPException`` (every 4xx detail of a route, e.g. a refused index's
    reason, which the library words with its absolute path for the command line) with each
    absolute path in its detail cut to the file name (:func:`neuralcodes.text.without_folders`;
    ``folders``: the server's own, removed exactly)."""
    from fastapi.exception_handlers import http_exception_handler
    from starlette.exceptions import HTTPException

    known = list(folders or [])

    async def file_names_only(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, HTTPException)
        if isinstance(exc.detail, str):
            exc = HTTPException(exc.status_code, without_folders(exc.detail, known),
                                exc.headers)
        return await http_exception_handler(request, exc)

    app.add_exception_handler(HTTPException, file_names_only)
