"""`ParamError`: what every check of a job's parameters raises.

It names the field, so that the API can answer 422 with the field's path and the UI can
show the message. It lives apart from `params` so that the checks `params` calls (such as
`prompt_limits`) can raise their own kind of it.

This module must never import anything but the standard library (and webui.errors).
"""

from __future__ import annotations

from ..errors import UserError


class ParamError(ValueError, UserError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
