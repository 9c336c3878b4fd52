"""What every request meets before any route: a body-size limit, no URL fetching, nosniff.

- A request body over `--max-request-mb` (64 MB by default; 0: no limit) answers 413. A
  declared `Content-Length` over the limit is refused before a byte of the body is read;
  a body sent without one (chunked) is counted as it arrives and cut off at the limit, so
  a client cannot make the server hold more than the limit in memory.
- This server fetches no URL a request names: Gradio's file route would fetch an http(s)
  URL given as the file (`/gradio_api/file=https://...`) and its proxy route forwards to
  other servers; both answer 403. (The API refuses URLs as images in `imaging.codec`.)
- Every response carries `X-Content-Type-Options: nosniff`: a browser never runs an
  uploaded file as HTML or script because its bytes look like it.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import json
import re

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .subpath import route_path

_FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")
_PROXY_ROUTES = ("/gradio_api/proxy=",)
_SCHEME = re.compile(r"\s*[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, file:, ...
NO_URLS = "URLs are not fetched by this server"


class BodyTooLarge(HTTPException):
    """Raised by the counting `receive` once a body passes the limit; any route's error
    handling turns it into a 413 (FastAPI passes HTTPExceptions through)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large(limit))


def _too_large(limit: int) -> str:
    return f"request body too large: the limit is {limit // 2**20} MB (--max-request-mb)"


def fetches_url(path: str) -> bool:
    """Whether a request path asks Gradio to fetch a URL server-side."""
    lowered = path.lower()
    if lowered.startswith(_PROXY_ROUTES):
        return True
    for prefix in _FILE_ROUTES:
        if lowered.startswith(prefix):
            rest = path[len(prefix) :]
            return bool(_SCHEME.match(rest)) or rest.startswith("//")
    return False


class HardeningMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = 0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_nosniff(send)
        if fetches_url(route_path(scope)):
            await _json(send, 403, NO_URLS)
            return
        limit = self.max_body_bytes
        if limit <= 0:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _json(send, 400, "invalid Content-Length", close=True)
                return
            if int(declared) > limit:
                await _json(send, 413, _too_large(limit), close=True)
                return
        state = {"started": False, "over": False}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if state["over"]:  # the route answered the 413 itself: end the connection
                    MutableHeaders(scope=message).append("Connection", "close")
            await send(message)

        try:
            await self.app(scope, _counting(receive, limit, state), tracking_send)
        except BodyTooLarge:
            if not state["started"]:
                await _json(send, 413, _too_large(limit), close=True)


def _counting(receive: Receive, limit: int, state: dict[str, bool]) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                state["over"] = True
                raise BodyTooLarge(limit)
        return message

    return counted


def _with_nosniff(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            if "x-content-type-options" not in headers:
                headers.append("X-Content-Type-Options", "nosniff")
        await send(message)

    return wrapped


async def _json(send: Send, status: int, detail: str, close: bool = False) -> None:
    data = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:  # the unread body is not waited for: the connection ends with the answer
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
