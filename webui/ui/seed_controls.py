"""The seed controls of every generation tab: A1111's seed row and its "Extra" options.

Seed, with the dice (-1: random) and recycle (the tab's last job's seed) buttons, and the
"Extra" checkbox beside them that shows A1111's second and third rows: the variation seed
(with its own dice and recycle buttons) and the variation strength, then "Resize seed from
width/height". As in A1111, the extras count only while "Extra" is ticked. `seed_fields`
turns the named values into params fields (`webui.core.params.Txt2ImgParams`).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..core.params import MAX_SEED
from .icons import icon_button
from .image_common import Named, whole


def build_seed_controls(named: Named, prefix: str) -> None:
    """The seed row and the (hidden until "Extra") variation rows, named seed, subseed..."""
    with gr.Row(elem_id=f"{prefix}_seed_row"):
        named.add("seed", gr.Number(label="Seed", value=-1, precision=0, minimum=-1,
                                    maximum=MAX_SEED, scale=4, elem_id=f"{prefix}_seed"))  # fmt: skip
        named.add("random_seed", icon_button("random", elem_id=f"{prefix}_random_seed"))
        named.add("reuse_seed", icon_button("reuse", elem_id=f"{prefix}_reuse_seed"))
        extra = named.add("seed_extra", gr.Checkbox(label="Extra", value=False, scale=1,
                                                    elem_id=f"{prefix}_subseed_show"))  # fmt: skip
    with gr.Row(visible=False, elem_id=f"{prefix}_subseed_row") as variation_row:
        named.add("subseed", gr.Number(label="Variation seed", value=-1, precision=0, minimum=-1,
                                       maximum=MAX_SEED, scale=4, elem_id=f"{prefix}_subseed"))  # fmt: skip
        named.add("random_subseed", icon_button("random", elem_id=f"{prefix}_random_subseed"))
        named.add("reuse_subseed", icon_button("reuse", elem_id=f"{prefix}_reuse_subseed"))
        named.add("subseed_strength", gr.Slider(label="Variation strength", minimum=0, maximum=1,
                                                step=0.01, value=0, scale=4,
                                                elem_id=f"{prefix}_subseed_strength"))  # fmt: skip
    with gr.Row(visible=False, elem_id=f"{prefix}_seed_resize_row") as resize_row:
        named.add("seed_resize_from_w", gr.Slider(label="Resize seed from width", minimum=0,
                                                  maximum=2048, step=8, value=0,
                                                  elem_id=f"{prefix}_seed_resize_from_w"))  # fmt: skip
        named.add("seed_resize_from_h", gr.Slider(label="Resize seed from height", minimum=0,
                                                  maximum=2048, step=8, value=0,
                                                  elem_id=f"{prefix}_seed_resize_from_h"))  # fmt: skip
    extra.change(lambda shown: (gr.Row(visible=shown), gr.Row(visible=shown)), inputs=extra,
                 outputs=[variation_row, resize_row], show_progress="hidden")  # fmt: skip


def wire_seed_buttons(named: Named, last_seed, last_subseed) -> None:
    """Dice: -1 (random); recycle: the seed or variation seed of the tab's last job."""
    for name, last in (("seed", last_seed), ("subseed", last_subseed)):
        box = named[name]
        named[f"random_{name}"].click(lambda: -1, outputs=box, show_progress="hidden")
        named[f"reuse_{name}"].click(
            lambda previous, current: current if previous is None else previous,
            inputs=[last, box], outputs=box, show_progress="hidden",
        )  # fmt: skip


def seed_fields(v: dict[str, Any]) -> dict[str, Any]:
    """Seed, variation seed and strength, resize seed from; the extras only with "Extra"."""
    fields: dict[str, Any] = {
        "seed": whole(-1 if v["seed"] is None else v["seed"], "Seed"),
        "subseed": whole(-1 if v["subseed"] is None else v["subseed"], "Variation seed"),
    }
    if v["seed_extra"]:
        fields.update(
            subseed_strength=float(v["subseed_strength"] or 0),
            seed_resize_from_w=whole(v["seed_resize_from_w"] or 0, "Resize seed from width"),
            seed_resize_from_h=whole(v["seed_resize_from_h"] or 0, "Resize seed from height"),
        )
    return fields
