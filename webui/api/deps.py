"""The dependencies every API route shares: the AppContext and the calling user.

`Ctx` is the one `AppContext` the composition root stored on `app.state`; `User` is the
caller (its --api-auth user, else "api"). Routes declare them as parameters:
`def route(ctx: Ctx, user: User)`.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..context import AppContext
from .auth import api_user


def get_ctx(request: Request) -> AppContext:
    """The running program's AppContext."""
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]
User = Annotated[str, Depends(api_user)]  # the HTTP Basic user with --api-auth, else "api"
