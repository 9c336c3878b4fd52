"""A1111's POST /sdapi/v1/interrogate: a picture to a caption (CLIP) or tags (DeepBooru,
WD14-style taggers).

`interrogate_router()` is included by `routes.api_router` under /sdapi/v1 with its auth.
The work is an "interrogate" job of the shared queue (`services.interrogate`); the route
awaits its end and holds no thread meanwhile. A1111 answers an unknown model with 404;
here it is 422 naming the `model` field, like every other bad value of this API (clients
such as sdwebuiapi only check for success). A missing model file is a 422 on `model`
whose message names the file and the folder it belongs in.

This module must never import torch or transformers: it only talks to the AppContext.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..context import AppContext
from ..imaging.codec import ImageInputError, decode_base64_image
from ..services.errors import RequestError
from ..services.interrogate import InterrogateService
from .deps import Ctx, User
from .mapping import FieldError
from .routes import _ApiRoute
from .routes_queue import ended_badly, wait_for_job


class InterrogateRequest(BaseModel):
    image: str = Field(default="", title="Image", description="Image to work on, must be a Base64 string containing the image's data.")  # fmt: skip
    model: str = Field(default="clip", title="Model", description="The interrogate model used: clip, deepdanbooru, wd14 or a WD14 tagger folder of models/interrogate.")  # fmt: skip


class InterrogateResponse(BaseModel):
    caption: str | None = Field(default=None, title="Caption", description="The generated caption for the image.")  # fmt: skip


def service(ctx: AppContext) -> InterrogateService:
    return InterrogateService(ctx.jobs, ctx.flags.models_dir, ctx.options)


def interrogate_router() -> APIRouter:
    router = APIRouter(route_class=_ApiRoute)

    @router.post("/interrogate", response_model=InterrogateResponse)
    async def interrogate(req: InterrogateRequest, ctx: Ctx, user: User) -> Any:
        def submit():
            if not req.image:
                raise FieldError(("image",), "no image sent")
            try:
                image = decode_base64_image(req.image, "image").convert("RGB")
                return service(ctx).submit(image, req.model, user)
            except ImageInputError as exc:
                raise FieldError(("image",), exc.message) from None
            except RequestError as exc:
                raise FieldError(exc.loc, exc.message) from None

        job = await run_in_threadpool(submit)  # 422 / 429
        await wait_for_job(job)
        if (error := ended_badly(job)) is not None:
            return error
        return {"caption": getattr(job.result, "caption", None)}  # None: interrupted

    return router
