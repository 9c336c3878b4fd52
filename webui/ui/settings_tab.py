"""The Settings tab: every persisted option, validated on Apply, saved to config.json.

With --freeze-settings nothing can be changed; while the server is reachable from other
machines, options that are file system paths cannot be changed (`Options.locked`). The
controls show it, and `apply_settings` refuses it whatever the browser sends.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr

from .common import InputError

if TYPE_CHECKING:
    from ..context import AppContext
    from ..options import OptionDef, Options

LOCKED_NOTE = "locked: the server is reachable from other machines"


def apply_settings(
    options: Options, definitions: Sequence[OptionDef], values: Sequence[Any]
) -> str:
    """The Apply button: set and save the changed options; gr.Error for invalid ones.

    Frozen settings, or a changed path option while locked, refuse the whole form:
    nothing is changed then."""
    pending = {}
    for definition, value in zip(definitions, values, strict=True):
        if isinstance(definition.default, int) and not isinstance(definition.default, bool):
            value = int(value) if value is not None else definition.default
        if value != options.get(definition.key):
            pending[definition.key] = value
    if pending and options.read_only:
        raise InputError("Not saved: settings are frozen (--freeze-settings)")
    locked = sorted(set(pending) & options.locked)
    if locked:
        raise InputError(f"Not saved: {', '.join(locked)} is a file system path ({LOCKED_NOTE})")
    changed, errors = [], []
    for key, value in pending.items():
        try:
            options.set(key, value)
            changed.append(key)
        except ValueError as exc:
            errors.append(str(exc))
    if changed:
        options.save()
    if errors:
        raise InputError("; ".join(errors))
    return f"{len(changed)} settings changed: {', '.join(changed)}." if changed else "No change."


def build_settings_tab(ctx: AppContext) -> None:
    options = ctx.options
    definitions = list(options.definitions.values())
    frozen = options.read_only
    controls = []
    for definition in definitions:
        value = options.get(definition.key)
        label = f"{definition.label} ({definition.key})"
        editable = not frozen and definition.key not in options.locked
        if definition.key in options.locked:
            label += f" ({LOCKED_NOTE})"
        if isinstance(definition.default, bool):
            control = gr.Checkbox(label=label, value=value, interactive=editable)
        elif isinstance(definition.default, int):
            control = gr.Number(label=label, value=value, precision=0, interactive=editable)
        else:
            control = gr.Textbox(label=label, value=value, interactive=editable)
        controls.append(control)
    apply = gr.Button("Apply settings", variant="primary", interactive=not frozen)
    result = gr.Markdown("Settings are frozen (--freeze-settings)." if frozen else "")

    def save(*values):
        return apply_settings(options, definitions, values)

    apply.click(save, inputs=controls, outputs=result, api_name="apply_settings")
