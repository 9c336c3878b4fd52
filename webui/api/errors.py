"""How the API answers errors raised anywhere in a route: one handler per kind.

- `RequestError` (and the API's own `FieldError`): 422 in FastAPI's validation-error
  shape, `{"detail": [{"loc": ["body", ...], "msg", "type"}]}`.
- `NotBuiltError`: 501 naming the feature that is not built yet.
- `NoCheckpointError`: 503 saying where checkpoints go.
- `QueueFullError` (429) and `JobAccessError` (403): `routes_queue.add_queue_error_handlers`.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..services.errors import NoCheckpointError, RequestError
from .mapping import NotBuiltError
from .routes_queue import add_queue_error_handlers


def not_built_response(field: str, feature: str) -> JSONResponse:
    named = f"{feature} ({field})" if field else feature
    return JSONResponse(
        status_code=501, content={"detail": f"{named} is not implemented yet", "feature": named}
    )


def add_error_handlers(app: FastAPI) -> None:
    """Install every handler of this module (and the queue's) on `app`."""

    async def bad_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestError)
        return JSONResponse(status_code=422, content={"detail": exc.detail()})

    async def not_built(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, NotBuiltError)
        return not_built_response(exc.field, exc.feature)

    async def no_checkpoint(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    app.add_exception_handler(RequestError, bad_request)
    app.add_exception_handler(NotBuiltError, not_built)
    app.add_exception_handler(NoCheckpointError, no_checkpoint)
    add_queue_error_handlers(app)
