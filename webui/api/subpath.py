"""`--subpath /sd`: serve the whole app (UI, API, docs) under a URL prefix.

Works like `uvicorn --root-path`: a request for `/sd/...` gets `root_path="/sd"`, so
every route (Gradio's, the API's, extensions') matches without knowing the prefix, and
Gradio and the OpenAPI docs build their URLs with it. `/` and `/sd` redirect to `/sd/`;
anything else outside the prefix is 404. Meant for a reverse proxy that forwards
`https://host/sd/...` unchanged.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send


def route_path(scope: Scope) -> str:
    """The request path below the root path (the path routes are matched against)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


class SubpathMiddleware:
    def __init__(self, app: ASGIApp, subpath: str) -> None:
        self.app = app
        self.subpath = "/" + subpath.strip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "")
        prefix = root + self.subpath
        path = scope.get("path", "")
        if path.startswith(prefix + "/"):
            await self.app({**scope, "root_path": prefix}, receive, send)
            return
        if scope["type"] == "http" and path in (prefix, root + "/", root):
            query = scope.get("query_string", b"").decode("latin-1")
            target = prefix + "/" + (f"?{query}" if query else "")
            await RedirectResponse(target, status_code=307)(scope, receive, send)
            return
        if scope["type"] == "http":
            response = PlainTextResponse(f"Not found: this server lives under {prefix}/", 404)
            await response(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1008})
