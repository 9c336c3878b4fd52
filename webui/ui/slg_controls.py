"""SD 3.5's Skip Layer Guidance controls of the generation tabs: a scale slider (0: off;
3 is ComfyUI's SkipLayerGuidanceSD3 default for SD 3.5 Medium), the blocks to skip
("7, 8, 9") and the part of the steps it runs in (0.01-0.15). Shown when an SD 3.5
checkpoint is chosen, hidden (and off) for the others. Pasted parameters set them from
the infotext's "Skip layer guidance" fields (none: off). The work is
`core/skip_layer_guidance.py`.

This module must never import torch or diffusers (the model manager reads file headers).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core import skip_layer_guidance as slg
from .common import InputError

if TYPE_CHECKING:
    from ..context import AppContext
    from .image_common import Named  # (it imports paste, which imports this module)

SCALE, LAYERS, START, STOP = (
    "Skip layer guidance",
    "Skip layer guidance layers",
    "Skip layer guidance start",
    "Skip layer guidance stop",
)  # fmt: skip  (the infotext's keys too)
NAMES = ("slg_scale", "slg_layers", "slg_start", "slg_stop")
PASTE_ROWS = tuple((label, label) for label in (SCALE, LAYERS, START, STOP))
SCALE_INFO = "SD 3.5: 0 is off; 3 with blocks 7, 8, 9 for SD 3.5 Medium (needs CFG above 1)"


def add_slg_controls(named: Named, prefix: str) -> None:
    """The four controls, hidden until an SD 3.5 checkpoint is chosen."""
    named.add("slg_scale", gr.Slider(
        label=SCALE, minimum=0, maximum=10, step=0.1, value=0, visible=False, info=SCALE_INFO,
        elem_id=f"{prefix}_slg_scale"))  # fmt: skip
    named.add("slg_layers", gr.Textbox(
        label=LAYERS, value=", ".join(map(str, slg.DEFAULT_LAYERS)), visible=False,
        elem_id=f"{prefix}_slg_layers"))  # fmt: skip
    named.add("slg_start", gr.Slider(
        label=START, minimum=0, maximum=1, step=0.01, value=slg.DEFAULT_START,
        visible=False, elem_id=f"{prefix}_slg_start"))  # fmt: skip
    named.add("slg_stop", gr.Slider(
        label=STOP, minimum=0, maximum=1, step=0.01, value=slg.DEFAULT_STOP,
        visible=False, elem_id=f"{prefix}_slg_stop"))  # fmt: skip


def slg_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The job's Skip Layer Guidance fields from the controls (defaults when absent)."""
    try:
        layers = slg.parse_layers(values.get("slg_layers", "7, 8, 9") or "")
    except slg.LayersError as exc:
        raise InputError(f"{LAYERS}: {exc}") from None
    return {"skip_layer_guidance_scale": float(values.get("slg_scale") or 0),
            "skip_guidance_layers": layers,
            "skip_layer_guidance_start": float(values.get("slg_start", slg.DEFAULT_START)),
            "skip_layer_guidance_stop": float(values.get("slg_stop", slg.DEFAULT_STOP))}  # fmt: skip


def checkpoint_answer(ctx: AppContext, title: str | None, ask: Callable, default: Any) -> Any:
    """What `ask(info)` says of the checkpoint titled `title` (the model manager reads its
    header); `default` for no title or an unknown one."""
    if not title:
        return default
    try:
        return ask(ctx.models.resolve(title))
    except LookupError:
        return default


def slg_shown(ctx: AppContext, title: str | None) -> tuple:
    """The controls' updates for a chosen checkpoint: shown for SD 3.5, else hidden with
    the scale at 0 (off); a shown scale keeps its value (pasted parameters set it)."""
    shown = checkpoint_answer(ctx, title, ctx.models.skip_layer_guidance, False)
    scale = gr.update(visible=True) if shown else gr.update(visible=False, value=0)
    return scale, *(gr.update(visible=shown) for _ in NAMES[1:])


def wire_slg_controls(ctx: AppContext, checkpoint, named: Named) -> None:
    """Any change of checkpoint shows the controls for SD 3.5 and hides them (scale 0)
    for the others."""
    outputs = [named[name] for name in NAMES]
    checkpoint.change(partial(slg_shown, ctx), inputs=checkpoint, outputs=outputs,
                      show_progress="hidden")  # fmt: skip


def paste_fill(fields: dict[str, Any], controls: dict[str, Any]) -> dict[Any, Any]:
    """An infotext without Skip layer guidance turns it off (scale 0)."""
    scale = controls.get(SCALE)
    if scale is not None and SCALE not in fields:
        return {scale: 0}
    return {}
