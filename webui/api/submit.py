"""Submitting a generation from the API: the route's `GenerationRequest` goes to the
generation service, and what the service refuses is answered in A1111's terms.

`submit_generation(ctx, body, request)` is the API's only way to queue a generation:
POST /sdapi/v1/txt2img, /img2img, /extra-single-image, /extra-batch-images and
/webui/v1/txt2img all call it. A `RequestError` comes back as a `FieldError` naming the
A1111 field (422); `NoCheckpointError` (503) and `QueueFullError` (429) are answered by
the app's exception handlers (`webui.api.errors`).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import Any

from ..context import AppContext
from ..core.jobs import Job
from ..services.errors import RequestError
from ..services.generation import GenerationRequest
from .mapping import FieldError, a1111_loc


def submit_generation(ctx: AppContext, body: Any, request: GenerationRequest) -> Job:
    """Queue the generation `request` made from the A1111 request `body`."""
    try:
        return ctx.generation.submit(request)
    except RequestError as exc:
        raise FieldError(a1111_loc(exc.loc, body), exc.message) from None
