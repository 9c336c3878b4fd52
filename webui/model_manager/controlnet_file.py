"""A transformer family's ControlNet (FLUX.1's, SD 3.5's) as a diffusers model, from a
diffusers folder or from one `.safetensors` file whose tensors the family's loader renames
and sizes (`flux_controlnet.py`, `sd3_controlnet.py`).

This module must never import `webui.core` or a UI library.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError


def load_model_file(path: Path, model_class: Any, title: str, error: type[UserError],
                    layout_of: Callable[[dict], str | None], renames: dict[str, Callable],
                    config_of: Callable[[dict], dict]) -> Any:  # fmt: skip
    """`model_class` (CPU, float32) from a folder, or from a file whose keys `layout_of`
    tells (`renames`: the layouts whose tensors are renamed into the class's names), sized
    by `config_of` (its shapes); `error` naming the file and `title` (the kind of model)
    when it is of no layout or cannot be read."""
    from safetensors.torch import load_file

    try:
        if path.is_dir():
            return model_class.from_pretrained(str(path), local_files_only=True)
        state = load_file(str(path))
        layout = layout_of(state)
        if layout is None:
            raise error(f"ControlNet {path.name}: not a {title} layout this server reads "
                        f"(layouts: diffusers, {', '.join(renames)})")  # fmt: skip
        if layout in renames:
            state = renames[layout](state)
        model = model_class.from_config(config_of(shapes_of(state)))
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return model.eval()
    except UserError:
        raise
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise error(f"{title} {path.name}: cannot load it ({exc})") from exc


def shapes_of(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}
