"""The API docs, /docs (Swagger UI) and /redoc (ReDoc), working without the internet.

FastAPI's own docs pages load their scripts from a CDN, so offline they are blank. These
pages load them from this server: the files ship in the `fastapi-offline` package and are
served under /docs/assets/, which `--api-auth` protects like /docs itself (api.auth) and
`--subpath` prefixes like every route (the pages build their URLs from the root path).
Nothing on the pages points to another host: no CDN, no Google fonts, no online validator;
a Content-Security-Policy keeps the browser from loading anything from elsewhere (ReDoc's
side menu would fetch the Redocly logo from the web).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"  # under /docs: the same authentication applies
ASSETS = resources.files("fastapi_offline") / "static"
SWAGGER_PARAMETERS = {"validatorUrl": None}  # no badge fetched from validator.swagger.io
# this server only; inline scripts and styles are the pages' own set-up, blob: ReDoc's worker
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self' 'unsafe-inline'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self' data:",
    "worker-src 'self' blob:",
))  # fmt: skip


def install_docs(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets; the app is made with docs_url=None."""
    app.mount(ASSETS_PATH, StaticFiles(directory=str(ASSETS)), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            oauth2_redirect_url=None,  # HTTP Basic only: no OAuth2 flow to come back from
            swagger_ui_parameters={**SWAGGER_PARAMETERS, **(app.swagger_ui_parameters or {})},
        )
        return _local_only(page)

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
        return _local_only(page)


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page
