"""ASGI middleware of the web app: the request body budget, the access token and the host check.

- :class:`BodyBudget`: a body above the upload limit gets 413; all request bodies in flight,
  over every connection, share one byte budget (:class:`Budget`): a request that does not fit
  gets 503 with ``Retry-After`` at once, before its body is read; a body that pauses longer
  than the idle timeout gets 408. Bodies are never collected in memory here: the multipart
  parser streams them into spooled temporary files (memory up to 1 MiB each, then an unlinked
  file on disk, gone when closed or when the process ends). Requests without a body
  (searches, pages, images) come first (:class:`Priority`): while one is being answered, upload
  bodies wait before each chunk is read, so that receiving and spooling uploads does not take
  the interpreter (GIL) and the CPU from them.
- :class:`TokenAuth`: every route needs the server's token (cookie, ``Authorization: Bearer``,
  or ``?token=`` once, which sets the cookie): ``serve`` turns it on for non-loopback binds.
- :func:`add_host_check`: only the allowed ``Host`` names are answered (no DNS rebinding).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


#: Host names a loopback-bound server answers to.
LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
#: Room for the multipart envelope around an upload of the maximum size.
MULTIPART_OVERHEAD = 64 * 2**10
#: The cookie that carries the access token (set from ``?token=``).
TOKEN_COOKIE = "neuralcodes_token"
#: Seconds a client is told to wait (``Retry-After``) when the body budget is full.
RETRY_AFTER_S = 2
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The longest one chunk of an upload body waits for the requests being answered first.
PRIORITY_WAIT_S = 0.1


class BodyRefused(HTTPException):
    """A request body refused while it arrives (413, 408, 503); the connection is then closed.

    Raised from ``receive``: FastAPI passes an ``HTTPException`` from there on unchanged, so the
    app's own handler answers with ``{"detail": ...}``."""

    def __init__(self, status: int, detail: str, retry_after_s: int | None = None) -> None:
        headers = {"Connection": "close"}
        if retry_after_s is not None:
            headers["Retry-After"] = str(retry_after_s)
        super().__init__(status, detail, headers)


class Budget:
    """Bytes of request bodies held at once, over all connections (one event loop: no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  #: the most bytes ever held at once
        self.refused = 0  #: requests refused for want of budget

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes if they fit."""
        if self.used + n > self.limit:
            self.refused += 1
            return False
        self.used += n
        self.peak = max(self.peak, self.used)
        return True

    def give(self, n: int) -> None:
        self.used -= n


class Priority:
    """Requests without a body first: :meth:`first` marks one while it is answered (one event
    loop: no lock); :meth:`turn`, awaited before each chunk of an upload body is read, returns
    once none is left, or after ``max_wait_s`` (uploads still move under a stream of
    searches, one chunk per wait). A chunk not read is not received: the server stops reading
    that connection (flow control) and its client waits."""

    def __init__(self, max_wait_s: float = PRIORITY_WAIT_S) -> None:
        self.max_wait_s = max_wait_s
        self.active = 0  #: requests being answered first, now
        self.waits = 0  #: body chunks that waited for them
        self._waiters: list[asyncio.Future[None]] = []

    def first(self) -> Callable[[], None]:
        """Count a request as being answered; returns the call that ends it (once, however
        often it is called)."""
        self.active += 1
        ended = False

        def end() -> None:
            nonlocal ended
            if ended:
                return
            ended = True
            self.active -= 1
            if not self.active:
                for waiter in self._waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._waiters = []

        return end

    async def turn(self) -> None:
        """Wait while requests are answered first (at most :attr:`max_wait_s`)."""
        if not self.active:
            return
        self.waits += 1
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, self.max_wait_s)
        except asyncio.TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


class BodyBudget:
    """ASGI middleware: body size limit, shared byte budget and body idle timeout (see the
    module doc). ``limit``: the most bytes of one body; ``upload_limit``: the upload size the
    413 message names; ``budget``: shared by every request; ``idle_s``: the longest pause
    within a body; ``priority``: requests without a body go first (:class:`Priority`)."""

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int | None = None,
                 budget: Budget | None = None, idle_s: float = 10.0,
                 priority: Priority | None = None) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = (max(limit - MULTIPART_OVERHEAD, 0) if upload_limit is None
                             else upload_limit)
        self.budget = budget if budget is not None else Budget(limit)
        self.idle_s = idle_s
        self.priority = priority if priority is not None else Priority()

    def _too_large(self) -> BodyRefused:
        from neuralcodes.web.uploads import format_bytes

        return BodyRefused(413, "request too large (uploads are limited to "
                           f"{format_bytes(self.upload_limit)})")

    def _busy(self) -> BodyRefused:
        return BodyRefused(503, "the server is receiving too many uploads at once; retry in "
                           f"{RETRY_AFTER_S} s", RETRY_AFTER_S)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] in SAFE_METHODS:
            await self._first(scope, receive, send)
            return
        length_header = dict(scope.get("headers") or []).get(b"content-length")
        length = None
        if length_header is not None:
            if not length_header.isdigit() or int(length_header) > self.limit:
                await _answer(self._too_large(), scope, receive, send)
                return
            length = int(length_header)
        held = 0
        if length is not None:
            if not self.budget.take(length):
                await _answer(self._busy(), scope, receive, send)
                return
            held = length
        received = 0
        done = False
        started = False

        async def guarded() -> Message:
            nonlocal held, received, done
            if done:
                return await receive()
            await self.priority.turn()
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except asyncio.TimeoutError:
                log.warning("closed a request whose body stalled for %g s", self.idle_s)
                raise BodyRefused(408, f"the request body stalled (no data for "
                                  f"{self.idle_s:g} s)") from None
            if message["type"] != "http.request":
                done = True
                return message
            n = len(message.get("body", b""))
            received += n
            if received > self.limit:
                raise self._too_large()
            if length is None:  # chunked: charged as it comes
                if not self.budget.take(n):
                    raise self._busy()
                held += n
            if not message.get("more_body", False):
                done = True
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded, tracked)
        except BodyRefused as e:  # raised outside a FastAPI route (e.g. an unknown path)
            if not started:
                await _answer(e, scope, receive, send)
        finally:
            self.budget.give(held)

    async def _first(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request without a body, counted by :attr:`priority` until its last byte
        is handed over (not until a slow reader has taken it)."""
        end = self.priority.first()

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                end()
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            end()


async def _answer(e: HTTPException, scope: Scope, receive: Receive, send: Send) -> None:
    from starlette.responses import JSONResponse

    await JSONResponse({"detail": e.detail}, e.status_code, headers=e.headers)(
        scope, receive, send)


class TokenAuth:
    """ASGI middleware: every request needs ``token``: the :data:`TOKEN_COOKIE` cookie, an
    ``Authorization: Bearer`` header, or ``?token=`` on a GET, which answers with a redirect to
    the same address without it and sets the cookie (HttpOnly, SameSite=Strict), so the page
    and everything it loads carry it from then on. Anything else gets 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        if len(token) < 16:
            raise ValueError("an access token needs at least 16 characters")
        self.app = app
        self.token = token.encode()

    def _matches(self, value: str | bytes | None) -> bool:
        if value is None:
            return False
        given = value.encode("latin-1", "replace") if isinstance(value, str) else value
        return hmac.compare_digest(given, self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer " and self._matches(auth[7:].strip()):
            await self.app(scope, receive, send)
            return
        if self._matches(_cookie(headers.get(b"cookie", b""), TOKEN_COOKIE)):
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                          keep_blank_values=True)
        given = next((v for k, v in query if k == "token"), None)
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and \
                self._matches(given):
            from starlette.responses import RedirectResponse

            rest = urlencode([(k, v) for k, v in query if k != "token"])
            path = scope.get("raw_path") or scope.get("path", "/").encode()
            where = path.decode("latin-1") + (f"?{rest}" if rest else "")
            response = RedirectResponse(where, 303)
            response.set_cookie(TOKEN_COOKIE, self.token.decode(), httponly=True,
                                samesite="strict", path="/")
            await response(scope, receive, send)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        from starlette.responses import JSONResponse

        log.warning("refused a request without the access token: %s %s", scope["method"],
                    scope.get("path"))
        await JSONResponse({"detail": "this server needs its access token: open the address "
                            "that `neuralcodes serve` printed (it ends in ?token=...)"}, 401,
                           headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


def _cookie(header: bytes, name: str) -> str | None:
    try:
        jar = SimpleCookie(header.decode("latin-1"))
    except CookieError:
        return None
    morsel = jar.get(name)
    return None if morsel is None else morsel.value


def add_host_check(app: Any, allowed_hosts: list[str] | None) -> None:
    """Answer only requests whose ``Host`` is in ``allowed_hosts`` (None: any), so that a web
    page cannot reach the app through DNS rebinding."""
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts,
                           www_redirect=False)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
