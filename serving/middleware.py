"""HTTP concerns in front of every route: request ids, API keys, the request-body limit.

Pure ASGI middlewares (BentoML's ``add_asgi_middleware``), so they run before BentoML
parses a body:

- :class:`RequestContext` gives each request an id (the client's ``X-Request-ID`` when it
  is sane, else a new one), binds it to every log line of the request, returns it as a
  header and logs one JSON access event (method, path, status, latency).
- :class:`ApiKeyAuth` answers 401 without a valid ``X-API-Key`` (or ``Authorization:
  Bearer``) on every path but the open ones; keys are compared in constant time. A valid
  key's id (:func:`key_id`, never the key) goes into the request's state as ``api_key_id``:
  jobs are listed per key.
- :class:`BodyLimit` answers 413 as soon as the body is known to exceed the limit, from
  ``Content-Length`` or while counting the bytes as they arrive (BentoML has no setting for
  it). The 413 is sent by the middleware itself and the application then sees a
  disconnect: raising inside ``receive`` would become a 500.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from veracity.logs import bind_request_id, new_request_id

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access = logging.getLogger("serving.access")
_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or []:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


async def send_json(send: Send, status: int, body: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer a request with a JSON body from inside a middleware."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class RequestContext:
    """Request id and access log (outermost middleware)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _RID.match(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        with bind_request_id(rid):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                path = scope.get("path", "")
                if not path.startswith(("/livez", "/readyz", "/healthz", "/metrics")):
                    access.info("%s %s %s", scope.get("method"), path, status["code"],
                                extra={"method": scope.get("method"), "path": path, "status": status["code"],
                                       "latency_ms": round((time.perf_counter() - t0) * 1000, 2)})


def key_id(key: str) -> str:
    """A key's public id: the first 16 hex digits of its SHA-256 (says whose, not what)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class ApiKeyAuth:
    """401 unless the request carries one of ``keys`` (no keys configured: no check).

    An open prefix ``/`` opens the root page only, not every path under it.
    """

    def __init__(self, app: ASGIApp, keys: list[str], open_prefixes: tuple[str, ...]):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open = open_prefixes

    def _is_open(self, path: str) -> bool:
        return any(path == p or (p != "/" and path.startswith(p.rstrip("/") + "/")) for p in self.open)

    def _valid(self, scope: Scope) -> str | None:
        """The presented key when it is one of ours, else None."""
        given = _header(scope, b"x-api-key")
        if given is None:
            auth = _header(scope, b"authorization") or ""
            if auth[:7].lower() == "bearer ":
                given = auth[7:].strip()
        if not given:
            return None
        g = given.encode()
        # Every key is compared, so the time taken does not say which one nearly matched.
        ok = False
        for k in self.keys:
            ok |= hmac.compare_digest(g, k)
        return given if ok else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys:
            await self.app(scope, receive, send)
            return
        key = self._valid(scope)
        if key is not None:
            scope.setdefault("state", {})["api_key_id"] = key_id(key)
        if key is not None or self._is_open(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        await send_json(send, 401, {"error": "unauthorized",
                                    "message": "a valid API key is required (X-API-Key or Authorization: Bearer)"},
                        [(b"www-authenticate", b'Bearer realm="veracity"')])


class BodyLimit:
    """413 for a request body over ``max_bytes``, without reading more of it than that."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _too_large(self, size: int | None) -> dict[str, Any]:
        got = f"{size} bytes" if size is not None else "more"
        return {"error": "payload_too_large",
                "message": f"request body of {got} exceeds the limit of {self.max_bytes} bytes "
                           f"({self.max_bytes / 2**20:g} MiB; VERACITY_MAX_UPLOAD_MB)",
                "limit_bytes": self.max_bytes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_json(send, 400, {"error": "bad_request", "message": "Content-Length is not a number"})
                return
            if size > self.max_bytes:
                await send_json(send, 413, self._too_large(size))
                return
        seen = 0
        state = {"rejected": False, "started": False}

        async def counting_receive() -> Message:
            nonlocal seen
            if state["rejected"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    state["rejected"] = True
                    if not state["started"]:
                        await send_json(send, 413, self._too_large(None))
                        state["started"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["rejected"]:
                return  # the 413 has been sent; whatever the app answers to the disconnect is dropped
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)
