"""The Image Browser's API under /webui/v1/images: search, favourites, trash, the map.

- `GET /webui/v1/images`: one page of indexed images, filtered (prompt words, model,
  sampler, seed, size, date range, favourites, a map cluster's `ids`), sorted
  (`sort` date|name|seed|size, `order` desc|asc), paged by `cursor` (the previous page's
  `next_cursor`: keyset paging, as fast at image 100,000 as at the first); `refresh=true`
  scans the folders first.
- `POST /webui/v1/images/scan`: index new and changed files now.
- `GET /webui/v1/images/{id}` (with the infotext), `GET /webui/v1/images/{id}/file`.
- `POST /webui/v1/images/{id}/favourite`, `POST /webui/v1/images/{id}/delete` (the file
  moves to the trash folder in the data folder; it is never deleted).
- `GET /webui/v1/images/models`: CLIP vision models, and the models and samplers to
  filter by. `POST /webui/v1/images/embeddings`: queue the job that embeds the images
  (202 with the job id; follow it at /webui/v1/jobs/{id}).
- `GET /webui/v1/images/map`: every embedded image's place (x, y) and cluster.

Bad input answers 422 naming the field, an unknown id 404. This module must never import
torch or diffusers: it only talks to the AppContext.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ..context import AppContext
from ..core.image_index import Filters, IndexedImage
from ..errors import UserError
from ..services.image_browser import ImageBrowser
from .auth import api_user
from .deps import Ctx, User
from .routes_queue import PREFIX

MAX_PAGE = 500


class ImageItem(BaseModel):
    id: int
    path: str
    width: int
    height: int
    prompt: str
    negative_prompt: str
    model: str
    sampler: str
    seed: int = Field(description="-1: not in the infotext")
    mtime: float = Field(description="file date, Unix time")
    bytes: int
    favourite: bool
    infotext: str


class ImagePage(BaseModel):
    total: int = Field(description="images that match the filters")
    images: list[ImageItem]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class ScanInfo(BaseModel):
    added: int
    updated: int
    removed: int
    unchanged: int
    failed: list[str]


class FavouriteRequest(BaseModel):
    favourite: bool = True


class EmbeddingRequest(BaseModel):
    model: str = Field(description="a CLIP vision model of models/clip_vision")


class BrowserModels(BaseModel):
    clip_vision: list[str]
    models: list[str]
    samplers: list[str]


class MapPointItem(BaseModel):
    id: int
    x: float
    y: float
    cluster: int


class MapInfo(BaseModel):
    model: str
    clusters: int
    points: list[MapPointItem]


def browser_of(ctx: AppContext) -> ImageBrowser:
    if ctx.browser is None:
        raise HTTPException(503, "the image browser is not running")
    return ctx.browser


def item(image: IndexedImage) -> dict[str, Any]:
    return {**image.__dict__, "negative_prompt": image.negative}


def parse_cursor(text: str | None) -> tuple[Any, int] | None:
    if not text:
        return None
    try:
        value, image_id = json.loads(text)
        if not isinstance(value, int | float | str) or not isinstance(image_id, int):
            raise ValueError
    except (ValueError, TypeError):
        raise _field_error("cursor", "not a cursor this route gave out") from None
    return value, image_id


def _field_error(field: str, message: str) -> HTTPException:
    detail = [{"loc": ["query", field], "msg": message, "type": "value_error"}]
    return HTTPException(422, detail)


def _not_found(exc: UserError) -> HTTPException:
    return HTTPException(404, str(exc))


def browser_router() -> APIRouter:
    """The /webui/v1/images routes; the composition root includes them with --api."""
    router = APIRouter(prefix=f"{PREFIX}/images", tags=["image browser"],
                       dependencies=[Depends(api_user)])  # fmt: skip

    @router.get("", response_model=ImagePage)
    async def search(
        ctx: Ctx,
        words: str = "",
        model: str = "",
        sampler: str = "",
        seed: int | None = None,
        width: Annotated[int | None, Query(ge=1)] = None,
        height: Annotated[int | None, Query(ge=1)] = None,
        since: float | None = Query(None, description="file date from (Unix time)"),
        until: float | None = Query(None, description="file date before (Unix time)"),
        favourites: bool = False,
        ids: str = Query("", description="only these ids, comma-separated (a map cluster)"),
        sort: Literal["date", "name", "seed", "size"] = "date",
        order: Literal["desc", "asc"] = "desc",
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        cursor: str | None = None,
        refresh: bool = False,
    ) -> Any:
        browser = browser_of(ctx)
        try:
            only = tuple(int(i) for i in ids.split(",") if i.strip()) if ids.strip() else None
        except ValueError:
            raise _field_error("ids", "comma-separated image ids") from None
        filters = Filters(words, model, sampler, seed, width, height, since, until,
                          favourites, only)  # fmt: skip
        after = parse_cursor(cursor)
        if refresh:
            await run_in_threadpool(browser.scan)
        page = await run_in_threadpool(browser.search, filters, sort, order == "desc", limit, after)
        next_cursor = json.dumps(list(page.next_cursor)) if page.next_cursor else None
        return {"total": page.total, "images": [item(i) for i in page.images],
                "next_cursor": next_cursor}  # fmt: skip

    @router.post("/scan", response_model=ScanInfo)
    async def scan(ctx: Ctx) -> Any:
        return (await run_in_threadpool(browser_of(ctx).scan)).__dict__

    @router.get("/models", response_model=BrowserModels)
    def models(ctx: Ctx) -> Any:
        browser = browser_of(ctx)
        return {"clip_vision": browser.clip_models(), "models": browser.index.values("model"),
                "samplers": browser.index.values("sampler")}  # fmt: skip

    @router.post("/embeddings", status_code=202)
    def embeddings(ctx: Ctx, user: User, body: EmbeddingRequest) -> dict[str, str]:
        try:
            job = browser_of(ctx).submit_embeddings(body.model, owner=user)
        except UserError as exc:
            detail = [{"loc": ["body", "model"], "msg": str(exc), "type": "value_error"}]
            raise HTTPException(422, detail) from None
        return {"job": job.id, "state": job.state}

    @router.get("/map", response_model=MapInfo)
    async def similarity_map(
        ctx: Ctx, model: str, clusters: Annotated[int | None, Query(ge=1, le=50)] = None
    ) -> Any:
        browser = browser_of(ctx)
        try:
            shown = await run_in_threadpool(browser.similarity_map, model, clusters)
        except UserError as exc:
            raise _field_error("model", str(exc)) from None
        return {"model": shown.model, "clusters": shown.cluster_count,
                "points": [p.__dict__ for p in shown.points]}  # fmt: skip

    @router.get("/{image_id}", response_model=ImageItem)
    def details(ctx: Ctx, image_id: int) -> Any:
        try:
            return item(browser_of(ctx).get(image_id))
        except UserError as exc:
            raise _not_found(exc) from None

    @router.get("/{image_id}/file", response_class=FileResponse)
    def image_file(ctx: Ctx, image_id: int) -> Any:
        try:
            image = browser_of(ctx).get(image_id)
        except UserError as exc:
            raise _not_found(exc) from None
        if not Path(image.path).is_file():
            raise HTTPException(404, f"the file is gone: {Path(image.path).name}")
        return FileResponse(image.path)

    @router.post("/{image_id}/favourite")
    def favourite(ctx: Ctx, image_id: int, body: FavouriteRequest) -> dict[str, Any]:
        try:
            browser_of(ctx).set_favourite(image_id, body.favourite)
        except UserError as exc:
            raise _not_found(exc) from None
        return {"id": image_id, "favourite": body.favourite}

    @router.post("/{image_id}/delete")
    def delete(ctx: Ctx, image_id: int) -> dict[str, Any]:
        try:
            moved = browser_of(ctx).trash(image_id)
        except UserError as exc:
            raise _not_found(exc) from None
        return {"id": image_id, "trash": str(moved)}

    return router
