"""The quick-settings bar on top of the page (A1111's `quicksettings_list` option).

One control per listed option (default: checkpoint, SD VAE, clip skip), built once at
start from the option's list (a changed list applies after a restart). The checkpoint is
the page's checkpoint picker (`common.checkpoint_picker`: its refresh button and the "no
checkpoint" notice); the others are the Settings tab's widgets (`option_control`).

A change made by the user applies that option at once, with the Settings tab's checks,
saving and messages (`settings_tab.apply_option`); the Settings tab then shows the new
value, and an Apply in the Settings tab redraws the bar. Controls of the generation tabs
that stand for an option (each tab's SD VAE, Clip skip and VAE / Text Encoder) take the
option's value when the page loads and when it is changed here; a job runs with what its
tab shows. A value set by a script (PNG Info's "send to" sets the checkpoint and the
modules) changes this page only. With --freeze-settings the checkpoint picker still
chooses this page's checkpoint (and loads it); the other controls cannot be changed.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from .common import checkpoint_notice, checkpoint_picker
from .settings_tab import (
    CHECKPOINT,
    SettingsTab,
    apply_option,
    control_update,
    option_control,
    shown_values,
)

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

LIST_KEY = "quicksettings_list"
# option -> name of the generation tabs' control that follows it (`Named` names); the
# modules: Forge's "VAE / Text Encoder" (`module_controls`)
TAB_MIRRORS = {
    "sd_vae": "vae",
    "CLIP_stop_at_last_layers": "clip_skip",
    "forge_additional_modules": "modules",
}


@dataclass
class QuickSettings:
    """The bar's controls by option key; `checkpoint` is always there (the tabs read it)."""

    checkpoint: gr.Dropdown
    controls: dict[str, gr.components.Component]
    notice: gr.Markdown
    refresh_checkpoints: Any  # () -> (dropdown update, notice update)
    mirrors: dict[str, list[Any]] = field(default_factory=dict)  # key -> tabs' controls


def listed_keys(ctx: AppContext) -> list[str]:
    """The bar's options in the order listed; unknown names are logged and skipped."""
    keys = []
    for key in ctx.options.get(LIST_KEY):
        if key in ctx.options.definitions:
            keys.append(key)
        else:
            log.warning("%s: no option %r; not shown in the quick-settings bar", LIST_KEY, key)
    return keys


def build_quicksettings(ctx: AppContext) -> QuickSettings:
    """The bar's row; call where it goes (the top of the page)."""
    keys = listed_keys(ctx)
    controls: dict[str, gr.components.Component] = {}
    with gr.Row(elem_id="quicksettings", equal_height=True):
        checkpoint, button = checkpoint_picker(ctx, visible=CHECKPOINT in keys)
        for key in keys:
            if key == CHECKPOINT:
                controls[key] = checkpoint
                continue
            control = option_control(ctx, ctx.options.definitions[key], elem_id=f"quick_{key}")
            # not the tabs' label: their "Clip skip" is this job's, this one the default
            control.label = f"{ctx.options.definitions[key].label} (default)"
            control.elem_classes = ["quicksettings-option"]
            controls[key] = control
    notice, refresh = checkpoint_notice(ctx, checkpoint, button)
    return QuickSettings(checkpoint, controls, notice, refresh)


def follow_option(quick: QuickSettings, key: str, components: Sequence[Any]) -> None:
    """`components` (a control in each generation tab) show option `key`'s value."""
    quick.mirrors.setdefault(key, []).extend(components)


def connect_quicksettings(
    ctx: AppContext, demo: gr.Blocks, quick: QuickSettings, settings: SettingsTab
) -> None:
    """Page load fills the bar; a change applies the option; Settings' Apply redraws it."""
    keys = list(quick.controls)
    bar = [quick.controls[k] for k in keys]
    mirrored = [(k, c) for k, cs in quick.mirrors.items() for c in cs]

    def redraw() -> list[Any]:
        values = shown_values(ctx)
        bar_updates = [_bar_update(ctx, k, values[k]) for k in keys]
        return [*bar_updates, *(control_update(ctx, k, values[k]) for k, _ in mirrored)]

    outputs = [*bar, *(c for _, c in mirrored)]
    demo.load(redraw, outputs=outputs, show_progress="hidden")
    settings.saved.success(redraw, outputs=outputs, show_progress="hidden")
    for key in keys:
        _connect_one(ctx, quick, settings, key, mirrored)


def _bar_update(ctx: AppContext, key: str, value: Any) -> dict[str, Any]:
    if key == CHECKPOINT:  # filled by `refresh_checkpoints` on load (and its button); the
        return gr.update()  # Settings tab sets it when it applies a new checkpoint
    return control_update(ctx, key, value)


def _connect_one(
    ctx: AppContext,
    quick: QuickSettings,
    settings: SettingsTab,
    key: str,
    mirrored: list[tuple[str, Any]],
) -> None:
    control = quick.controls[key]
    followers = [c for k, c in mirrored if k == key]

    def changed(value: Any, shown: Mapping[str, Any]):
        if key == CHECKPOINT and ctx.options.read_only:  # this page's choice only
            if value:
                ctx.jobs.submit("load", value, owner="ui-preload")
            return [gr.skip()] * (2 + len(followers))
        apply_option(ctx, key, value)  # InputError: the page shows it, nothing changed
        stored = shown_values(ctx)[key]
        now = {**shown, key: stored} if shown else gr.skip()  # not loaded yet: left so
        # one update each: Gradio changes an update dict while it applies it
        return [now, *(control_update(ctx, key, stored) for _ in range(1 + len(followers)))]

    control.input(changed, inputs=[control, settings.shown],
                  outputs=[settings.shown, settings.controls[key], *followers],
                  show_progress="hidden", trigger_mode="always_last")  # fmt: skip
