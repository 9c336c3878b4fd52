"""Who is asking: HTTP Basic for the API, browser identity for the UI, cross-origin guard.

- `--api-auth user:pass[,...]`: every API route (/sdapi, /webui/v1, /ext, /docs and
  /redoc with their assets, the OpenAPI schema) answers 401 without valid HTTP Basic
  credentials. Passwords are compared in constant time and never appear in a response or
  a log line.
- `--gradio-auth` / `--gradio-auth-path`: Gradio's own login protects the UI; the
  logged-in user name is the owner of the jobs a browser submits. Gradio leaves a few of
  its routes open (heartbeat, cancel, run history, ...): `SecurityMiddleware` answers 401
  on every UI route but the login page and static assets until the browser is logged in.
- Without UI login, each browser is its own owner: `SecurityMiddleware` gives it a random
  identity cookie (HttpOnly, SameSite=Lax) on its first page load; the owner name is a
  hash of it (`webui.owners.guest_owner`), so listings never reveal the token.
- Requests that change state (POST, PUT, PATCH, DELETE) from a page of another origin are
  refused with 403 unless the origin is allowed by --cors-allow-origins(-regex): a web
  page elsewhere on the LAN cannot interrupt jobs or change options through a visitor's
  browser.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import secrets
from collections.abc import Sequence
from http.cookies import SimpleCookie
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..owners import API_OWNER, OWNER_COOKIE
from .subpath import route_path

log = logging.getLogger(__name__)

COOKIE_MAX_AGE = 365 * 24 * 3600
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_API_PATHS = ("/sdapi/", "/webui/v1", "/ext/", "/docs", "/redoc", "/openapi.json")
# what a browser needs before it has logged in to the UI: the login page and static assets
_UI_PUBLIC = frozenset({"/", "/login", "/login/", "/logout", "/theme.css", "/favicon.ico",
                        "/robots.txt", "/manifest.json", "/gradio_api/theme.css"})  # fmt: skip
_UI_PUBLIC_PREFIXES = ("/static/", "/assets/", "/svelte/", "/pwa_icon")
_basic = HTTPBasic(auto_error=False)


def matching_user(username: str, password: str, users: Sequence[tuple[str, str]]) -> str | None:
    """The user whose name and password both match, compared in constant time.

    Every entry is compared (no early exit), so the time taken does not tell which
    user names exist.
    """
    found = None
    given_user, given_pass = username.encode(), password.encode()
    for user, secret in users:
        user_ok = hmac.compare_digest(given_user, user.encode())
        pass_ok = hmac.compare_digest(given_pass, secret.encode())
        if user_ok and pass_ok and found is None:
            found = user
    return found


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header, None when absent/bad."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def unauthorized() -> HTTPException:
    return HTTPException(401, "Incorrect username or password", {"WWW-Authenticate": "Basic"})


def api_user(
    request: Request, credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> str:
    """FastAPI dependency: the job owner of an API request.

    The HTTP Basic user with --api-auth (401 otherwise), else "api".
    """
    users = request.app.state.ctx.flags.api_credentials()
    if not users:
        return API_OWNER
    if credentials is not None:
        user = matching_user(credentials.username, credentials.password, users)
        if user is not None:
            return user
    raise unauthorized()


def origin_allowed(origin: str, host_headers: Sequence[str], cors: Any = None) -> bool:
    """Same origin as the host the request was sent to, or allowed by the CORS flags."""
    try:
        netloc = urlsplit(origin).netloc.lower() if "://" in origin else ""
    except ValueError:  # e.g. a broken IPv6 address: not an origin we know
        return False
    if netloc and any(netloc == h.strip().lower() for h in host_headers if h):
        return True
    if cors is None:
        return False
    allowed = [o.strip() for o in (cors.cors_allow_origins or "").split(",") if o.strip()]
    if "*" in allowed or origin in allowed:
        return True
    pattern = cors.cors_allow_origins_regex
    return bool(pattern and re.fullmatch(pattern, origin))


class SecurityMiddleware:
    """API authentication, the cross-origin guard and the browser identity cookie."""

    def __init__(self, app: ASGIApp, flags: Any) -> None:
        self.app = app
        self.flags = flags
        self.api_users = flags.api_credentials()
        self.ui_login = bool(flags.gradio_auth or flags.gradio_auth_path)
        self.secure_cookie = bool(flags.tls_certfile)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method = scope["method"]
        path = route_path(scope)  # below --subpath
        if method in _UNSAFE_METHODS and not self._same_or_allowed_origin(headers):
            await _json(
                send, 403, {"detail": "cross-origin request refused (see --cors-allow-origins)"}
            )
            return
        is_api = path.startswith(_API_PATHS)
        if is_api and self.api_users and method != "OPTIONS":
            given = basic_credentials(headers.get("authorization"))
            if given is None or matching_user(*given, self.api_users) is None:
                await _json(send, 401, {"detail": "Not authenticated"},
                            [(b"www-authenticate", b'Basic realm="webui"')])  # fmt: skip
                return
        if not is_api and self.ui_login and not _ui_public(path):
            if not _ui_logged_in(scope, headers):
                await _json(send, 401, {"detail": {"error": "Not authenticated"}})
                return
        if is_api or self.ui_login or method != "GET" or _has_cookie(headers, OWNER_COOKIE):
            await self.app(scope, receive, send)
            return
        cookie_path = scope.get("root_path", "") + "/"
        await self.app(scope, receive, self._with_identity_cookie(send, cookie_path))

    def _same_or_allowed_origin(self, headers: Headers) -> bool:
        origin = headers.get("origin")
        if origin is None:  # not sent by a browser page of another origin
            return True
        hosts = [headers.get("host", ""), *headers.get("x-forwarded-host", "").split(",")]
        return origin_allowed(origin, hosts, self.flags)

    def _with_identity_cookie(self, send: Send, path: str) -> Send:
        token = secrets.token_urlsafe(24)
        parts = [f"{OWNER_COOKIE}={token}", f"Path={path}",
                 f"Max-Age={COOKIE_MAX_AGE}", "HttpOnly", "SameSite=Lax"]  # fmt: skip
        if self.secure_cookie:
            parts.append("Secure")
        cookie = "; ".join(parts)

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("set-cookie", cookie)
            await send(message)

        return send_with_cookie


def _ui_public(path: str) -> bool:
    return path in _UI_PUBLIC or path.startswith(_UI_PUBLIC_PREFIXES)


def _ui_logged_in(scope: Scope, headers: Headers) -> bool:
    """Whether the request carries a valid Gradio login token (its own cookie names)."""
    app = scope.get("app")
    gradio_app = getattr(getattr(app, "state", None), "gradio_app", None)
    if gradio_app is None:  # no UI mounted (--nowebui): nothing to log in to
        return True
    cookies = cookie_parser(headers.get("cookie", ""))
    cookie_id = getattr(gradio_app, "cookie_id", "")
    tokens = getattr(gradio_app, "tokens", {}) or {}
    for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
        token = cookies.get(name)
        if token and tokens.get(token) is not None:
            return True
    return False


def _has_cookie(headers: Headers, name: str) -> bool:
    raw = headers.get("cookie")
    if not raw:
        return False
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed cookie header is treated as no cookie
        return False
    return name in jar


async def _json(
    send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": data})
