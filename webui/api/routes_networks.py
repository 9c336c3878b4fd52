"""A1111's extra-network endpoints: loras, embeddings, sd-vae, prompt-styles, and refresh.

`networks_router()` is included by `routes.api_router` under /sdapi/v1 with its auth.
Listing reads the indexes built at start-up (or by refresh); LoRA metadata is read from
the safetensors headers on request and cached.

This module must never import torch or diffusers: it only talks to the AppContext.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException

from ..core.extra_networks import Networks as NetworkIndexes
from .auth import api_user
from .deps import Ctx

log = logging.getLogger(__name__)


def _networks(ctx: Ctx) -> NetworkIndexes:
    if ctx.networks is None:
        raise HTTPException(503, "extra networks are not set up on this server")
    return ctx.networks


Networks = Annotated[NetworkIndexes, Depends(_networks)]


def networks_router() -> APIRouter:
    """The extra-network routes, without a prefix (api_router adds /sdapi/v1)."""
    from .routes import _ApiRoute

    router = APIRouter(route_class=_ApiRoute, dependencies=[Depends(api_user)])

    @router.get("/loras")
    def loras(networks: Networks) -> Any:
        out = []
        for file in networks.loras.list():
            metadata = networks.loras.metadata(file)
            out.append({"name": file.name, "alias": metadata.get("ss_output_name") or file.name,
                        "path": str(file.path), "metadata": metadata})  # fmt: skip
        return out

    @router.post("/refresh-loras")
    def refresh_loras(networks: Networks) -> Any:
        networks.loras.refresh()
        return None

    @router.get("/embeddings")
    def embeddings(networks: Networks) -> Any:
        registry = networks.embeddings
        loaded, skipped = registry.describe(registry.model_widths)
        return {"loaded": loaded, "skipped": skipped}

    @router.post("/refresh-embeddings")
    def refresh_embeddings(networks: Networks) -> Any:
        networks.embeddings.refresh()
        return None

    @router.get("/sd-vae")
    def sd_vae(networks: Networks) -> Any:
        return [{"model_name": f.filename, "filename": str(f.path)} for f in networks.vaes.list()]

    @router.post("/refresh-vae")
    def refresh_vae(networks: Networks) -> Any:
        networks.vaes.refresh()
        return None

    @router.get("/prompt-styles")
    def prompt_styles(networks: Networks) -> Any:
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in networks.styles.all()]  # fmt: skip

    return router
