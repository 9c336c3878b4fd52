"""The "Shift" slider of the generation tabs (the flow-matching shift of SD 3.5, FLUX.1
and Z-Image): shown when such a checkpoint is chosen, with that model's default (SD 3.5
and Z-Image Turbo: 3, FLUX.1 schnell: 1, dev: 0, its own shift from the image size);
hidden and set to 0 for the others. 0 sends no shift (None: the model's own), so a
checkpoint without flow matching never gets one. Pasted parameters keep their "Shift" (a
checkpoint set by them only shows or hides the slider; an infotext without one sets 0). The families' other defaults (SD 3.5's
CFG Scale 3.5, Euler, Simple) come with their presets (`generation_tab`).

This module must never import torch or diffusers (the model manager reads file headers).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import gradio as gr

from .image_common import Named
from .slg_controls import checkpoint_answer

if TYPE_CHECKING:
    from ..context import AppContext

SHIFT_INFO = "0: the model's own (FLUX.1 dev: from the image size)"


def shift_controls(ctx: AppContext, title: str | None) -> Any:
    """The Shift slider's update for a chosen checkpoint: shown with its family's default
    on a flow-matching model, else hidden at 0 (no shift)."""
    default = checkpoint_answer(ctx, title, ctx.models.flow_shift, None)
    if default is None:
        return gr.update(visible=False, value=0)
    return gr.update(visible=True, value=default)


def shift_value(value: Any) -> float | None:
    """The job's shift from the slider: None (the model's own) for 0 or nothing."""
    if value is None or float(value) == 0:
        return None
    return float(value)


def shift_shown(ctx: AppContext, title: str | None) -> Any:
    """Only the slider's visibility (and 0 when hidden): a checkpoint set by "read
    parameters" or "send to" keeps the Shift its infotext gave."""
    update = shift_controls(ctx, title)
    return update if update["visible"] is False else gr.update(visible=True)


def wire_shift_controls(ctx: AppContext, checkpoint, named: Named) -> None:
    """A checkpoint the user picks (the dropdown's "select", as the family preset: Gradio
    also sends "input" when the picker merely loses the focus) sets its default shift; any
    change of checkpoint (pasted parameters too) shows or hides the slider."""

    def picked(evt: gr.SelectData) -> Any:
        return shift_controls(ctx, evt.value)

    checkpoint.select(picked, outputs=named["shift"], show_progress="hidden",
                      trigger_mode="multiple")  # fmt: skip
    checkpoint.change(partial(shift_shown, ctx), inputs=checkpoint, outputs=named["shift"],
                      show_progress="hidden")  # fmt: skip
