"""The errors the services raise for what a user sent: each front end words them its way.

`RequestError` names where the bad value is (`loc`, in the services' own names: a params
field, an option key, ("script_args", "x_values"), ("alwayson_scripts", name, "args",
...)); the API turns the names into A1111 request fields and answers 422, the UI shows
the message. `NoCheckpointError` is a generation with no checkpoint to run it (503 in
the API, a note in the UI).

Standard library only (and `webui.errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError


class RequestError(ValueError, UserError):
    """A bad request; `loc` is the path of the bad value, `message` says what is wrong."""

    def __init__(self, loc: Sequence[str], message: str):
        self.loc: tuple[str, ...] = tuple(str(part) for part in loc)
        self.message = message
        super().__init__(f"{'.'.join(self.loc)}: {message}" if self.loc else message)

    def detail(self) -> list[dict[str, Any]]:
        """FastAPI's own validation-error shape (the loc is under "body")."""
        return [{"loc": ["body", *self.loc], "msg": self.message, "type": "value_error"}]


class NoCheckpointError(RuntimeError, UserError):
    """A generation was asked for while there is no checkpoint at all."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        super().__init__(f"no checkpoint: put a .safetensors file into {self.folder}")
