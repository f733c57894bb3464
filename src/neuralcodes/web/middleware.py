"""ASGI middleware of the web app: the request body limit and the local-host check."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Host names a loopback-bound server answers to.
LOCAL_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
#: Room for the multipart envelope around an upload of the maximum size.
MULTIPART_OVERHEAD = 64 * 2**10


class BodyLimit:
    """ASGI middleware: a request body above ``limit`` bytes gets 413 before the app reads it.

    Bodies with a ``Content-Length`` are judged by it; others (chunked) are read up to the limit
    and then handed on, so a multipart parser never spools more than ``limit`` to disk.
    ``upload_limit`` (default: ``limit`` less :data:`MULTIPART_OVERHEAD`) is the number the
    message names.
    """

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = (max(limit - MULTIPART_OVERHEAD, 0) if upload_limit is None
                             else upload_limit)

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

        from neuralcodes.web.uploads import format_bytes

        response = JSONResponse({"detail": f"request too large (uploads are limited to "
                                           f"{format_bytes(self.upload_limit)})"}, 413)
        await response(scope, receive, send)


def add_host_check(app: Any, allowed_hosts: list[str] | None) -> None:
    """Answer only requests whose ``Host`` is in ``allowed_hosts`` (None: any), so that a web
    page cannot reach a loopback-bound app through DNS rebinding."""
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
