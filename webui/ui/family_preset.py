"""The model families' presets in the generation tabs: what choosing a checkpoint sets.

A checkpoint with distilled guidance (FLUX.1 dev) shows Forge's "Distilled CFG Scale"
slider and gets CFG Scale 1 (true CFG off), Euler and Simple, as Forge's FLUX preset
does; a family with a preset of its own (Z-Image Turbo, SD 3.5) sets its steps, CFG
scale, sampler and schedule; other checkpoints hide the slider and change nothing else.

When the preset comes (the three ways the checkpoint picker gets a value):
- the user picks a checkpoint (its `select` event): the preset, and its Shift default
  (`sd3_controls`, on `select` too);
- the page loads (the start-up checkpoint is set by the load event): the preset and the
  Shift default too, except for a control whose default the user saved in ui-config.json
  (Settings > Defaults): that saved value stays, as Forge's "all" preset keeps the
  ui-config values;
- pasted or sent parameters set the checkpoint (only its `change` event): only the
  slider's visibility, so the CFG scale, sampler, schedule, steps and Shift pasted with
  it stay.

This module must never import torch or diffusers (the model manager reads file headers).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import gradio as gr

from .sd3_controls import shift_controls

if TYPE_CHECKING:
    from ..context import AppContext
    from .image_common import Named

FLUX_PRESET = {"cfg_scale": 1, "sampler": "Euler", "schedule": "Simple"}  # Forge's
# preset value -> the controls' `Named` name
CONTROLS = {"cfg_scale": "cfg", "sampler": "sampler", "schedule": "schedule", "steps": "steps"}
PRESET_NAMES = ("distilled_cfg", *CONTROLS.values())  # the outputs of `preset_updates`


def family_preset(ctx: AppContext, title: str | None) -> tuple[bool, dict[str, Any]]:
    """(shows the Distilled CFG Scale slider, {control name: value}) for a checkpoint."""
    if not title:
        return False, {}
    try:
        info = ctx.models.resolve(title)
        distilled = ctx.models.distilled_guidance(info)
        family = ctx.models.family_preset(info)  # Z-Image Turbo: 9 steps, CFG 1
    except LookupError:
        return False, {}
    values = family or (FLUX_PRESET if distilled else {})
    return distilled, {CONTROLS[k]: v for k, v in values.items() if k in CONTROLS}


def preset_updates(ctx: AppContext, title: str | None, keep: Collection[str] = ()) -> list:
    """One update per name of PRESET_NAMES: the slider shown or hidden, the preset's
    values, gr.skip() for a control without one or named in `keep`."""
    distilled, values = family_preset(ctx, title)
    updates = [gr.update(visible=distilled)]
    for name in PRESET_NAMES[1:]:
        updates.append(values[name] if name in values and name not in keep else gr.skip())
    return updates


def slider_shown(ctx: AppContext, title: str | None) -> Any:
    """Only the Distilled CFG Scale slider's visibility (any change of checkpoint)."""
    return gr.update(visible=family_preset(ctx, title)[0])


def wire_family_preset(ctx: AppContext, checkpoint, named: Named) -> None:
    """The user's pick (the dropdown's "select": Gradio also sends "input" when the picker
    merely loses the focus) sets the preset of the choice it carries; any change of
    checkpoint shows or hides the slider."""

    def picked(evt: gr.SelectData) -> list:
        return preset_updates(ctx, evt.value)

    outputs = [named[name] for name in PRESET_NAMES]
    checkpoint.select(picked, outputs=outputs, show_progress="hidden",
                      trigger_mode="multiple")  # fmt: skip
    checkpoint.change(partial(slider_shown, ctx), inputs=checkpoint,
                      outputs=named["distilled_cfg"], show_progress="hidden")  # fmt: skip


def start_updates(ctx: AppContext, tabs: Mapping[str, Named], saved: Collection[str], title):
    """The start-up checkpoint's preset and Shift for every tab, but not the controls
    with a saved ui-config default ("<tab>/<label>/value" keys in `saved`)."""
    updates: list[Any] = []
    for tab, named in tabs.items():
        keep = {name for name in (*PRESET_NAMES, "shift")
                if f"{tab}/{named[name].label}/value" in saved}  # fmt: skip
        updates += preset_updates(ctx, title, keep)
        shift = shift_controls(ctx, title)
        updates.append(gr.update(visible=shift["visible"]) if "shift" in keep else shift)
    return updates


def connect_start_preset(
    ctx: AppContext, loaded, checkpoint, tabs: Mapping[str, Named], saved: Collection[str]
) -> None:
    """After the page load event `loaded` has set the start-up checkpoint, its preset."""
    outputs = [named[name] for named in tabs.values() for name in (*PRESET_NAMES, "shift")]
    loaded.then(partial(start_updates, ctx, tabs, frozenset(saved)), inputs=checkpoint,
                outputs=outputs, show_progress="hidden")  # fmt: skip
