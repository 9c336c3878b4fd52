"""The "Refiner" section of the txt2img and img2img tabs, and the hires. fix checkpoint.

`add_refiner_controls` adds A1111's Refiner accordion (enable, "Checkpoint", "Switch at")
to a tab's named controls (refiner_enable, refiner_checkpoint, refiner_switch_at);
`refiner_fields(values)` turns them into the params fields. `add_hires_checkpoint` adds
the "Hires checkpoint" dropdown ("Use same checkpoint" or another one) to the Hires. fix
section, read by `hires_checkpoint(values)`. For parameter copy (`webui.ui.paste`):
`with_checkpoint_titles` turns the infotext's "Refiner" and "Hires checkpoint" (A1111's
"name [hash]") into the dropdowns' titles, `refiner_fill` ticks the enable box.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from .icons import icon_button

if TYPE_CHECKING:
    from ..context import AppContext
    from .image_common import Named  # it imports the paste module, which imports this one

ENABLE, CHECKPOINT, SWITCH_AT = "Enable refiner", "Checkpoint", "Switch at"
HIRES_CHECKPOINT, SAME_CHECKPOINT = "Hires checkpoint", "Use same checkpoint"
PASTE_LABELS = (ENABLE, CHECKPOINT, SWITCH_AT, HIRES_CHECKPOINT)


def _titles(ctx: AppContext) -> list[str]:
    return [info.title for info in ctx.models.checkpoints()]


def add_refiner_controls(ctx: AppContext, named: Named, prefix: str) -> None:
    """The Refiner accordion; its controls go into the tab's `named`."""
    with gr.Accordion("Refiner", open=False, elem_id=f"{prefix}_refiner"):
        named.add(
            "refiner_enable",
            gr.Checkbox(label=ENABLE, value=False, elem_id=f"{prefix}_enable_refiner"),
        )
        with gr.Row():
            checkpoint = named.add(
                "refiner_checkpoint",
                gr.Dropdown(label=CHECKPOINT, choices=_titles(ctx), value=None, scale=3,
                            elem_id=f"{prefix}_refiner_checkpoint"),
            )  # fmt: skip
            refresh = icon_button("refresh", elem_id=f"{prefix}_refiner_refresh")
            named.add(
                "refiner_switch_at",
                gr.Slider(label=SWITCH_AT, minimum=0.01, maximum=1.0, step=0.01, value=0.8,
                          scale=3, elem_id=f"{prefix}_refiner_switch_at"),
            )  # fmt: skip
    refresh.click(lambda: gr.Dropdown(choices=_titles(ctx)), outputs=checkpoint)


def refiner_fields(v: dict[str, Any]) -> dict[str, Any]:
    """The params fields of the Refiner controls; ValueError when enabled without one."""
    if not v.get("refiner_enable"):
        return {}
    if not v.get("refiner_checkpoint"):
        raise ValueError("Refiner: choose a checkpoint, or untick the refiner")
    return {
        "refiner_checkpoint": v["refiner_checkpoint"],
        "refiner_switch_at": float(v["refiner_switch_at"]),
    }


def add_hires_checkpoint(ctx: AppContext, named: Named) -> None:
    """The Hires. fix section's checkpoint dropdown (as hr_checkpoint)."""
    named.add(
        "hr_checkpoint",
        gr.Dropdown(label=HIRES_CHECKPOINT, choices=[SAME_CHECKPOINT, *_titles(ctx)],
                    value=SAME_CHECKPOINT, elem_id="txt2img_hr_checkpoint"),
    )  # fmt: skip


def hires_checkpoint(v: dict[str, Any]) -> str | None:
    value = v.get("hr_checkpoint")
    return None if value in (None, "", SAME_CHECKPOINT) else value


def with_checkpoint_titles(ctx: AppContext, fields: dict) -> dict:
    """The infotext's refiner and hires checkpoint as titles the dropdowns hold (left as
    they are when no checkpoint matches: the paste then says it is not available)."""
    out = dict(fields)
    for key in ("Refiner", "Hires checkpoint"):
        value = fields.get(key)
        if isinstance(value, str) and value:
            try:
                out[key] = ctx.models.resolve(value).title
            except LookupError:
                pass
    return out


def refiner_fill(fields: dict, controls: dict[str, Any]) -> dict[Any, Any]:
    """The enable box follows the infotext (A1111 writes "Refiner" only when on)."""
    enable = controls.get(ENABLE)
    return {} if enable is None else {enable: "Refiner" in fields}
