"""A1111's script and extension endpoints: GET /scripts, /script-info and /extensions.

`extensions_router()` is included by `routes.api_router` under /sdapi/v1 with its auth.
The answers come from the extension host (built-in scripts are extensions too). An
extension's own API router is mounted under /ext/<name> by the composition root.

This module must never import torch or diffusers: it only talks to the AppContext.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from .mapping_ext import extensions_listing, script_info, scripts_listing


def _host(request: Request) -> Any:
    return getattr(request.app.state.ctx, "extensions", None)


def extensions_router() -> APIRouter:
    """The routes, without a prefix (api_router adds /sdapi/v1)."""
    from .routes import _ApiRoute

    router = APIRouter(route_class=_ApiRoute)

    @router.get("/scripts")
    def scripts(request: Request) -> dict[str, list[str]]:
        """Selectable scripts per tab, by A1111 title (lowercase): send one as script_name."""
        return scripts_listing(_host(request))

    @router.get("/script-info")
    def scripts_info(request: Request) -> list[dict[str, Any]]:
        """Every script and always-on extension with its named arguments."""
        return script_info(_host(request))

    @router.get("/extensions")
    def extensions(request: Request) -> list[dict[str, Any]]:
        """Installed extensions: source, git remote/branch/commit, version, enabled, error."""
        return extensions_listing(_host(request))

    return router
