"""SD 3.5's controls in the generation tabs: the "Shift" slider (the flow-matching shift)
is shown when an SD 3.5 checkpoint is chosen, with that model's defaults (Euler, Simple,
CFG Scale 3.5, shift 3); it is hidden for other checkpoints, whose controls stay as they
are.

This module must never import torch or diffusers (the model manager reads file headers).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import gradio as gr

from .image_common import Named

if TYPE_CHECKING:
    from ..context import AppContext

SD3_PRESET = (3.5, "Euler", "Simple")  # CFG scale, sampler, schedule (Stability's Large)


def shift_controls(ctx: AppContext, title: str | None) -> tuple:
    """Updates of (Shift, CFG Scale, Sampling method, Schedule type) for a chosen
    checkpoint: shown with SD 3.5's defaults for such a checkpoint, else hidden and the
    others left as they are."""
    default = None
    if title:
        try:
            default = ctx.models.flow_shift(ctx.models.resolve(title))
        except LookupError:
            default = None
    if default is None:
        return gr.update(visible=False), *(gr.skip(),) * 3
    return gr.update(visible=True, value=default), *SD3_PRESET


def wire_shift_controls(ctx: AppContext, checkpoint, named: Named) -> None:
    outputs = [named["shift"], named["cfg"], named["sampler"], named["schedule"]]
    checkpoint.change(partial(shift_controls, ctx), inputs=checkpoint, outputs=outputs,
                      show_progress="hidden")  # fmt: skip
