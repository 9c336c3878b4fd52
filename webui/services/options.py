"""Option values from the outside, validated: option changes and a job's own options.

- `checked_options(changes, options, models)`: new values for the server's options (the
  Settings tab's Apply, POST /sdapi/v1/options), all checked before any is set.
- `job_options(override_settings, options)`: the options one job runs with (A1111's
  `override_settings`); they go into that job's options snapshot, never the server's.

Bad values raise `RequestError` whose loc is the option key (under "override_settings"
for a job's own options). This module must never import torch, gradio or fastapi, and
never change the server's options itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..model_manager.registry import CheckpointInfo
from ..options import Options
from .errors import RequestError
from .protocols import Models

log = logging.getLogger(__name__)

OVERRIDES = "override_settings"
CHECKPOINT = "sd_model_checkpoint"
CLIP_SKIP = "CLIP_stop_at_last_layers"
LOCKED_PATH = (
    "a file system path cannot be changed while the server is reachable from other machines"
)


def job_options(settings: Mapping[str, Any], options: Options) -> dict[str, Any]:
    """override_settings naming a known option, validated: the job's own option values.

    Unknown keys are ignored as A1111 ignores them (and logged). The checkpoint is not an
    option of the job but a params field (`GenerationService` sets it)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        definition = options.definitions.get(key)
        if definition is None:
            log.info("override_settings: unknown option %r ignored", key)
            continue
        if key == CHECKPOINT or value is None:
            continue
        loc = (OVERRIDES, key)
        try:
            out[key] = definition.validate(value)
        except (TypeError, ValueError) as exc:
            raise RequestError(loc, str(exc)) from None
        if key in options.locked and out[key] != options.get(key):
            raise RequestError(loc, LOCKED_PATH)
        if definition.path:
            check_output_folder(loc, out[key])
    return out


def check_output_folder(loc: tuple[str, ...], value: Any) -> None:
    """An output folder option must name a folder that exists or can be made, and that can
    be written: a RequestError now, rather than a job that fails when it saves."""
    if not value:
        return
    try:
        folder = Path(str(value)).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        writable = folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)
    except (OSError, ValueError, RuntimeError) as exc:  # ValueError: a NUL in the path
        raise RequestError(loc, f"cannot save images into {value!r}: {exc}") from None
    if not writable:
        raise RequestError(loc, f"cannot save images into {value!r}: not a writable folder")


def checkpoint_info(value: Any, models: Models, loc: tuple[str, ...]) -> CheckpointInfo:
    """The checkpoint a title, name, file name or hash means; RequestError if none."""
    if not isinstance(value, str):
        raise RequestError(loc, f"expected a checkpoint name, got {value!r}")
    try:
        return models.resolve(value)
    except LookupError as exc:
        raise RequestError(loc, str(exc.args[0] if exc.args else exc)) from None


def checkpoint_for_options(value: Any, models: Models) -> str:
    """The title a sd_model_checkpoint option value names; RequestError when unknown, or
    when the file is empty, truncated or no checkpoint (read from its header alone)."""
    info = checkpoint_info(value, models, (CHECKPOINT,))
    problem = models.unreadable(info)  # never the default: a file that cannot load
    if problem is not None:
        raise RequestError((CHECKPOINT,), problem)
    return info.title


def checked_options(changes: Mapping[str, Any], options: Options, models: Models) -> dict[str, Any]:
    """New values for known options, validated: a checkpoint becomes its title, an output
    folder must be one that images can be saved into (unless locked: that is refused
    when it is set). RequestError names the first bad one."""
    checked: dict[str, Any] = {}
    for key, value in changes.items():
        definition = options.definitions[key]
        try:
            checked[key] = definition.validate(value)
        except (TypeError, ValueError) as exc:
            raise RequestError((key,), str(exc)) from None
        if definition.path and key not in options.locked:
            check_output_folder((key,), checked[key])
    if checked.get(CHECKPOINT):
        checked[CHECKPOINT] = checkpoint_for_options(checked[CHECKPOINT], models)
    return checked
