"""Who owns a job: the names the UI and the API give the people who submit work.

- An API request without --api-auth belongs to `API_OWNER` ("api"); with --api-auth, to
  its HTTP Basic user.
- A browser with a UI login belongs to its user name. Without login, each browser gets a
  random identity cookie (`OWNER_COOKIE`, set by `webui.api.auth.SecurityMiddleware`) and
  is the owner `guest_owner(token)`: a hash, so queue listings never reveal the token.

Standard library only: the UI, the API and the services all import it, and it must never
import a web framework, torch or another part of the program.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

API_OWNER = "api"  # the owner of API jobs when --api-auth is not set
OWNER_COOKIE = "webui_owner"  # the browser identity cookie (HttpOnly, SameSite=Lax)


def guest_owner(token: str) -> str:
    """The owner name of a browser without login, from its secret identity token.

    The name is shown to other users; it is a hash, so it never reveals the token.
    """
    return "guest-" + hashlib.sha256(token.encode()).hexdigest()[:10]


def owner_from_cookies(cookies: Mapping[str, Any] | None) -> str | None:
    """The guest owner name of a browser's identity cookie, None without one."""
    token = cookies.get(OWNER_COOKIE) if cookies is not None else None
    return guest_owner(token) if isinstance(token, str) and token else None
