"""The extension API: what an extension declares and what its hooks receive (API_VERSION).

An extension is a module with `setup() -> Extension`. The `Extension` names its hooks and
UI; every hook gets its own arguments *by name* (`args`, a dict keyed by the names of the
controls it declares), never by position. The types here are plain dataclasses so that
the host, the UI, the API and the worker can share them.

Versioning: `API_VERSION` grows by one when a hook or a field changes incompatibly. An
extension says which version it was written for (`Extension.api_version`); the host
refuses one written for a newer API, and one older than `MIN_API_VERSION`.

This module must never import torch, diffusers, gradio or fastapi.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..core.run import JobInfo, SavedImage  # the worker's run context makes these
from ..errors import UserError

API_VERSION = 1
MIN_API_VERSION = 1

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
ControlKind = Literal["checkbox", "slider", "number", "textbox", "dropdown", "radio"]
KINDS = ("checkbox", "slider", "number", "textbox", "dropdown", "radio")


class ArgError(ValueError, UserError):
    """An extension argument is missing, unknown or has a bad value.

    `loc` is where it sits (extension name, then the control name), for 422 answers."""

    def __init__(self, loc: Sequence[str], message: str):
        super().__init__(f"{'.'.join(loc)}: {message}" if loc else message)
        self.loc = tuple(loc)
        self.message = message


@dataclass(frozen=True)
class Control:
    """One named input of an extension: a UI control and an API argument of that name."""

    name: str
    label: str
    kind: ControlKind = "textbox"
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    lines: int = 1
    info: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"control name must be an identifier, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"control {self.name}: kind must be one of {', '.join(KINDS)}")
        if self.kind in ("dropdown", "radio") and not self.choices:
            raise ValueError(f"control {self.name}: a {self.kind} needs choices")

    def validate(self, value: Any) -> Any:
        """The value as the hook will see it; ValueError with a short reason."""
        if value is None:
            return self.default
        if self.kind == "checkbox":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError(f"expected true or false, got {value!r}")
        if self.kind in ("slider", "number"):
            return self._number(value)
        if self.kind in ("dropdown", "radio"):
            if isinstance(value, int) and not isinstance(value, bool) and value not in self.choices:
                if 0 <= value < len(self.choices):  # A1111 clients send the index
                    return self.choices[value]
            if value not in self.choices:
                raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {value!r}")
        return value

    def _number(self, value: Any) -> float | int:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        if self.minimum is not None and number < self.minimum:
            raise ValueError(f"must be at least {self.minimum:g}, got {number:g}")
        if self.maximum is not None and number > self.maximum:
            raise ValueError(f"must be at most {self.maximum:g}, got {number:g}")
        integral = isinstance(self.default, int) and not isinstance(self.default, bool)
        if integral:
            if not number.is_integer():
                raise ValueError(f"expected a whole number, got {value!r}")
            return int(number)
        return number


@dataclass(frozen=True)
class Section:
    """Named controls shown in the generation tabs (an accordion, or a script's panel)."""

    title: str
    controls: tuple[Control, ...] = ()
    tabs: tuple[str, ...] = ("txt2img", "img2img")
    open: bool = False

    def __post_init__(self) -> None:
        names = [c.name for c in self.controls]
        if len(names) != len(set(names)):
            raise ValueError(f"section {self.title!r}: control names must be unique")


@dataclass(frozen=True)
class StepInfo:
    """One finished sampling step: `step` of `steps` in batch `batch` of `batches`."""

    job: JobInfo
    step: int
    steps: int
    batch: int
    batches: int
    preview: Any = None  # the latest live preview (a PIL image), if one was made yet


@dataclass
class ExtensionContext:
    """The narrow facade an extension gets at start-up and for its API router."""

    name: str
    directory: Path | None  # the extension's folder (None for packages and built-ins)
    data_dir: Path  # a folder of its own for files it keeps (created on first use)
    option: Callable[[str], Any]  # read a web UI option by key
    flags: Any  # the command-line flags (read-only)
    log: logging.Logger

    def data_path(self, name: str) -> Path:
        """A file in the extension's own data folder (the folder is created)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir / name


@dataclass(frozen=True)
class Tab:
    """An extra top-level UI tab: `build(ui)` creates Gradio components in it.

    `ui` is a `webui.ui.ext_ui.TabContext` (send-to buttons, the extension context)."""

    title: str
    build: Callable[[Any], None]


BeforeJob = Callable[[JobInfo, Any, dict], Any]  # -> params, a list of params, or None
OnStep = Callable[[StepInfo, dict], None]
AfterJob = Callable[[JobInfo, Any, dict], None]  # result is None when the job failed
OnImageSaved = Callable[[SavedImage, dict], None]
RunScript = Callable[[Any, dict], Any]  # (ScriptRun, args) -> list of images shown
CheckArgs = Callable[[dict, Any], dict]  # (args, ArgCheck) -> args; raises ValueError


@dataclass(frozen=True)
class Extension:
    """What `setup()` returns. Only `name` is required; every hook is optional.

    - `section`: named controls in the txt2img/img2img tabs; their values reach every
      hook as `args`. With `run`, the extension is a *script* (A1111's "Script" list):
      chosen per job, it replaces the generation and calls `ScriptRun.process` itself.
    - `tab`: an extra top-level tab. `router`: a callable that returns a FastAPI
      `APIRouter`, mounted under `/ext/<name>`.
    - `on_startup(ctx)` once when the server starts; `before_job(job, params, args)`
      returns new params (or a list of params: the job then runs once per entry);
      `on_step(step, args)` after every sampling step; `after_job(job, result, args)`;
      `on_image_saved(saved, args)` for every image and grid written.
    - `check_args(args, check)` validates the arguments when the job is submitted.
    """

    name: str
    title: str = ""
    version: str = ""
    description: str = ""
    api_version: int = API_VERSION
    section: Section | None = None
    tab: Tab | None = None
    router: Callable[[ExtensionContext], Any] | None = None
    on_startup: Callable[[ExtensionContext], None] | None = None
    before_job: BeforeJob | None = None
    on_step: OnStep | None = None
    after_job: AfterJob | None = None
    on_image_saved: OnImageSaved | None = None
    run: RunScript | None = None
    check_args: CheckArgs | None = None

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise ValueError(
                f"extension name must be lowercase letters, digits and _, got {self.name!r}"
            )
        if not isinstance(self.api_version, int):
            raise ValueError(f"api_version must be a whole number, got {self.api_version!r}")

    @property
    def display_title(self) -> str:
        return self.title or self.name

    @property
    def is_script(self) -> bool:
        return self.run is not None

    @property
    def controls(self) -> tuple[Control, ...]:
        return self.section.controls if self.section else ()

    def default_args(self) -> dict[str, Any]:
        return {c.name: c.default for c in self.controls}

    def args_from(self, given: Any, loc: tuple[str, ...] = ()) -> dict[str, Any]:
        """Validated args from a dict by name, or a list in declared order; the defaults
        fill what is not given. Raises ArgError naming the argument."""
        loc = loc or (self.name,)
        controls = {c.name: c for c in self.controls}
        if given is None:
            given = {}
        if isinstance(given, list | tuple):
            if len(given) > len(self.controls):
                raise ArgError(loc, f"takes at most {len(self.controls)} arguments "
                               f"({', '.join(controls) or 'none'}), got {len(given)}")  # fmt: skip
            given = {c.name: v for c, v in zip(self.controls, given, strict=False)}
        if not isinstance(given, Mapping):
            raise ArgError(loc, "args must be an object by name or a list")
        unknown = [k for k in given if k not in controls]
        if unknown:
            raise ArgError((*loc, str(unknown[0])),
                           f"unknown argument; known: {', '.join(controls) or 'none'}")  # fmt: skip
        args = self.default_args()
        for key, value in given.items():
            try:
                args[key] = controls[key].validate(value)
            except ValueError as exc:
                raise ArgError((*loc, key), str(exc)) from None
        return args
