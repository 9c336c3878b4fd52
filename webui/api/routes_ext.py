"""A1111's script and extension endpoints: GET /scripts, /script-info and /extensions.

`extensions_router()` is included by `routes.api_router` under /sdapi/v1 with its auth.
The answers come from the extension host (built-in scripts are extensions too). An
extension's own API router is mounted under /ext/<name> by the composition root.

This module must never import torch or diffusers: it only talks to the AppContext.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .deps import Ctx
from .mapping_ext import extensions_listing, script_info, scripts_listing


def extensions_router() -> APIRouter:
    """The routes, without a prefix (api_router adds /sdapi/v1)."""
    from .routes import _ApiRoute

    router = APIRouter(route_class=_ApiRoute)

    @router.get("/scripts")
    def scripts(ctx: Ctx) -> dict[str, list[str]]:
        """Selectable scripts per tab, by A1111 title (lowercase): send one as script_name."""
        return scripts_listing(ctx.generation)

    @router.get("/script-info")
    def scripts_info(ctx: Ctx) -> list[dict[str, Any]]:
        """Every script and always-on extension with its named arguments."""
        return script_info(ctx.generation)

    @router.get("/extensions")
    def extensions(ctx: Ctx) -> list[dict[str, Any]]:
        """Installed extensions: source, git remote/branch/commit, version, enabled, error."""
        return extensions_listing(ctx.extensions)

    return router
