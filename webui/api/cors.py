"""Cross-origin access: only from --cors-allow-origins / --cors-allow-origins-regex.

A CORS middleware is always installed on the parent app: with no flag it allows no origin
at all. That also switches off Gradio's own CORS handling, which would otherwise answer
any origin when the server is reached through a LAN address. An origin that is not
allowed gets no Access-Control-* header at all, on preflights and on actual requests.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import Message, Send

log = logging.getLogger(__name__)


def allowed_origins(flags: Any) -> list[str]:
    return [o.strip() for o in (flags.cors_allow_origins or "").split(",") if o.strip()]


def _strip_cors_headers(headers: MutableHeaders) -> None:
    for name in {key for key in headers.keys() if key.lower().startswith("access-control-")}:
        del headers[name]


class OriginOnlyCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, minus the Access-Control-Allow-Credentials/-Methods/
    -Headers it sends to every origin (on refused preflights and on every response)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 200:  # refused: nothing a browser could act on
            _strip_cors_headers(response.headers)
        return response

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        origin = request_headers.get("origin")
        if message["type"] != "http.response.start" or origin is None:
            await super().send(message, send, request_headers)
            return
        allowed = self.is_allowed_origin(origin)

        async def checked(start: Message) -> None:
            if not allowed:
                _strip_cors_headers(MutableHeaders(scope=start))
            await send(start)

        await super().send(message, checked, request_headers)


def install_cors(app: FastAPI, flags: Any) -> None:
    """Add the CORS middleware configured by the flags (no origin allowed without them)."""
    origins = allowed_origins(flags)
    regex = flags.cors_allow_origins_regex or None
    if origins or regex:
        log.info("CORS: allowing %s", ", ".join(origins + ([f"/{regex}/"] if regex else [])))
    app.add_middleware(
        OriginOnlyCORSMiddleware,
        allow_origins=origins,
        allow_origin_regex=regex,
        allow_methods=["*"],
        allow_headers=["*"],
        allow_credentials=True,
    )
