"""The "Soft inpainting" accordion of the Inpaint tab, and of the img2img tab for a batch
with a mask directory (A1111 1.7's built-in extension).

A checkbox that turns it on and A1111's six sliders (labels, help, ranges and defaults
from `webui.core.soft_inpainting`), read into the job's `SoftInpainting` settings; the
infotext fields that PNG Info and "Send to inpaint" fill back (`PASTE_FIELDS`).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.soft_inpainting import DEFAULTS, ENABLED_FIELD, ENABLED_LABEL, SETTINGS, SoftInpainting
from .common import InputError

if TYPE_CHECKING:  # image_common imports the paste module, which imports this one
    from .image_common import Named

HELP = (
    "Blends the original into the inpainted image by the mask's opacity, at every step "
    "and in the final composite. High Mask blur values are recommended."
)
__all__ = ["ENABLED_LABEL", "PASTE_FIELDS", "soft_inpainting_inputs", "soft_inpainting_params"]
# infotext field -> control label (the enabled checkbox is set apart: False when absent)
PASTE_FIELDS: dict[str, str] = {s.field: s.label for s in SETTINGS}


def soft_inpainting_inputs(named: Named, elem_id: str = "soft_inpainting") -> None:
    """The accordion, closed, with the checkbox off and A1111's default values."""
    with gr.Accordion("Soft inpainting", open=False, elem_id=elem_id):
        named.add("soft_enabled", gr.Checkbox(
            label=ENABLED_LABEL, value=False, elem_id=f"{elem_id}_enabled"))  # fmt: skip
        gr.Markdown(HELP)
        for setting in SETTINGS:
            named.add(f"soft_{setting.name}", gr.Slider(
                label=setting.label, info=setting.info, minimum=setting.minimum,
                maximum=setting.maximum, step=setting.step,
                value=getattr(DEFAULTS, setting.name),
                elem_id=f"{elem_id}_{setting.name}"))  # fmt: skip


def soft_inpainting_params(v: dict[str, Any]) -> SoftInpainting | None:
    """The settings the controls hold; None when the checkbox is off."""
    if not v["soft_enabled"]:
        return None
    values = {}
    for setting in SETTINGS:
        value = v[f"soft_{setting.name}"]
        if value is None:
            raise InputError("Soft inpainting: every slider needs a number")
        values[setting.name] = float(value)
    try:
        return SoftInpainting(**values).validated()
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def paste_enabled(fields: dict[str, Any]) -> bool:
    """Whether an infotext had soft inpainting on (A1111 writes the field only then)."""
    return str(fields.get(ENABLED_FIELD, "")).lower() == "true"
