"""Cross-origin access: only from --cors-allow-origins / --cors-allow-origins-regex.

A CORS middleware is always installed on the parent app: with no flag it allows no origin
at all. That also switches off Gradio's own CORS handling, which would otherwise answer
any origin when the server is reached through a LAN address.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

log = logging.getLogger(__name__)


def allowed_origins(flags: Any) -> list[str]:
    return [o.strip() for o in (flags.cors_allow_origins or "").split(",") if o.strip()]


def install_cors(app: FastAPI, flags: Any) -> None:
    """Add the CORS middleware configured by the flags (no origin allowed without them)."""
    origins = allowed_origins(flags)
    regex = flags.cors_allow_origins_regex or None
    if origins or regex:
        log.info("CORS: allowing %s", ", ".join(origins + ([f"/{regex}/"] if regex else [])))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_origin_regex=regex,
        allow_methods=["*"],
        allow_headers=["*"],
        allow_credentials=True,
    )
