"""The Models tab's routes under /webui/v1/models: list, details, notes, a FLUX.1
checkpoint's variant mark (Kontext), rename, move, delete, hash, Civitai info, and
downloads with their progress.

The composition root includes `models_router()` with --api. Everything goes through
`ctx.model_files` (`services/models.py:ModelsService`); a refused name or path is a 422
naming the field, a download on a server reachable from other machines a 403 (unless
--enable-insecure-extension-access).

This module must never import torch or diffusers: it only talks to the AppContext.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from ..model_manager.catalog import CatalogError
from ..model_manager.fetch import DownloadError
from ..services.models import DownloadAccessError, DownloadRequest, ModelsService
from .auth import api_user
from .deps import Ctx

PREFIX = "/webui/v1/models"
Kind = Literal["checkpoint", "lora", "embedding", "vae", "controlnet", "upscaler",
               "text_encoder", "clip_vision"]  # fmt: skip


def _service(ctx: Ctx) -> ModelsService:
    if ctx.model_files is None:
        raise HTTPException(503, "the model catalog is not set up on this server")
    return ctx.model_files


Service = Annotated[ModelsService, Depends(_service)]


class ModelRef(BaseModel):
    kind: Kind
    rel: str = Field(description="path inside the kind's folder, '/'-separated")


class RenameBody(ModelRef):
    new_name: str = Field(description="new file name; the suffix is kept")


class MoveBody(ModelRef):
    folder: str = Field(description="subfolder of the kind's folder; '' for the top")


class NotesBody(ModelRef):
    notes: str = Field(max_length=20_000)


class FluxVariantBody(ModelRef):
    flux_variant: Literal["", "kontext"] = Field(
        description="'kontext': run this FLUX.1 checkpoint as FLUX.1 Kontext; '': as its "
        "file name and metadata say"
    )


class CivitaiBody(ModelRef):
    refresh: bool = Field(False, description="ask Civitai again instead of the cache")


class DownloadBody(BaseModel):
    url: str = Field(description="Hugging Face / Civitai / direct URL, or a HF 'owner/repo'")
    file: str = Field("", description="the file in the Hugging Face repo given as url")
    kind: Kind | Literal[""] = Field("", description="'' = read from the file")
    folder: str = Field("", description="subfolder of the kind's folder")
    name: str = Field("", description="file name to save as; '' = the site's name")
    sha256: str = Field("", description="expected sha256, checked besides the site's")


def _unprocessable(field: str, exc: Exception) -> HTTPException:
    return HTTPException(422, [{"loc": ["body", field], "msg": str(exc), "type": "value_error"}])


def _row(row: Any) -> dict:
    return dict(row.__dict__) | {"name": row.name}


def models_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["models"], dependencies=[Depends(api_user)])

    @router.get("")
    def listing(service: Service, kind: Kind | None = None, family: str | None = None,
                search: str = "", offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Any:  # fmt: skip
        """One page of models of every kind (sorted by kind and path), filtered."""
        service.catalog.ensure_fresh()
        total, rows = service.catalog.query(kind, family, search, offset, limit)
        return {"total": total, "items": [_row(r) for r in rows],
                "families": service.catalog.families(kind)}  # fmt: skip

    @router.post("/refresh")
    def refresh(service: Service) -> Any:
        """Rescan the model folders (only new or changed files are opened)."""
        return {"total": service.catalog.refresh()}

    @router.get("/details")
    def details(service: Service, kind: Kind, rel: str) -> Any:
        try:
            return service.catalog.details(kind, rel)
        except CatalogError as exc:
            raise HTTPException(404, str(exc)) from None

    def run(field: str, call, *args) -> Any:
        try:
            return call(*args)
        except (CatalogError, DownloadError) as exc:
            raise _unprocessable(field, exc) from None

    @router.post("/hash")
    def hash_(body: ModelRef, service: Service) -> Any:
        return {"sha256": run("rel", service.catalog.ensure_hash, body.kind, body.rel)}

    @router.post("/notes")
    def notes(body: NotesBody, service: Service) -> Any:
        run("rel", service.catalog.set_notes, body.kind, body.rel, body.notes)
        return {"notes": body.notes}

    @router.post("/flux-variant")
    def flux_variant(body: FluxVariantBody, service: Service) -> Any:
        """Mark a FLUX.1 checkpoint as Kontext in its user metadata (`name.json`)."""
        run("rel", service.catalog.set_flux_variant, body.kind, body.rel, body.flux_variant)
        return {"flux_variant": body.flux_variant}

    @router.post("/rename")
    def rename(body: RenameBody, service: Service) -> Any:
        run("rel", service.catalog.path_of, body.kind, body.rel)
        return {"rel": run("new_name", service.rename, body.kind, body.rel, body.new_name)}

    @router.post("/move")
    def move(body: MoveBody, service: Service) -> Any:
        run("rel", service.catalog.path_of, body.kind, body.rel)
        return {"rel": run("folder", service.move, body.kind, body.rel, body.folder)}

    @router.post("/delete")
    def delete(body: ModelRef, service: Service) -> Any:
        return {"trash": str(run("rel", service.delete, body.kind, body.rel))}

    @router.post("/civitai")
    def civitai(body: CivitaiBody, service: Service) -> Any:
        """Civitai's record of the file by its sha256 (cached; `refresh` asks again)."""
        try:
            return service.civitai_info(body.kind, body.rel, refresh=body.refresh)
        except CatalogError as exc:
            raise _unprocessable("rel", exc) from None
        except DownloadError as exc:
            raise HTTPException(502, str(exc)) from None

    _download_routes(router)
    return router


def _download_routes(router: APIRouter) -> None:
    @router.post("/download", status_code=202)
    def download(body: DownloadBody, service: Service) -> Any:
        """Start a download; poll /downloads/{id} for its progress."""
        try:
            task = service.start_download(DownloadRequest(**body.model_dump()))
        except DownloadAccessError as exc:
            raise HTTPException(403, str(exc)) from None
        except CatalogError as exc:
            field = next((f for f in ("kind", "folder", "name") if f in str(exc)), "name")
            field = "name" if "file name" in str(exc) else field
            raise _unprocessable(field, exc) from None
        return task.as_dict()

    @router.get("/downloads")
    def downloads(service: Service) -> Any:
        return [task.as_dict() for task in service.tasks()]

    @router.get("/downloads/{task_id}")
    def download_state(task_id: str, service: Service) -> Any:
        task = service.task(task_id)
        if task is None:
            raise HTTPException(404, f"no download {task_id}")
        return task.as_dict()

    @router.post("/downloads/{task_id}/cancel")
    def cancel(task_id: str, service: Service) -> Any:
        task = service.task(task_id)
        if task is None:
            raise HTTPException(404, f"no download {task_id}")
        task.cancel.set()
        return task.as_dict()
