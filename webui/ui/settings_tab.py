"""The Settings tab: every persisted option, validated on Apply, saved to config.json.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

if TYPE_CHECKING:
    from ..context import AppContext


def build_settings_tab(ctx: AppContext) -> None:
    options = ctx.options
    definitions = list(options.definitions.values())
    frozen = bool(getattr(ctx.flags, "freeze_settings", False))
    controls = []
    for definition in definitions:
        value = options.get(definition.key)
        label = f"{definition.label} ({definition.key})"
        if isinstance(definition.default, bool):
            control = gr.Checkbox(label=label, value=value, interactive=not frozen)
        elif isinstance(definition.default, int):
            control = gr.Number(label=label, value=value, precision=0, interactive=not frozen)
        else:
            control = gr.Textbox(label=label, value=value, interactive=not frozen)
        controls.append(control)
    apply = gr.Button("Apply settings", variant="primary", interactive=not frozen)
    result = gr.Markdown("Settings are frozen (--freeze-settings)." if frozen else "")

    def save(*values):
        changed, errors = [], []
        for definition, value in zip(definitions, values, strict=True):
            if isinstance(definition.default, int) and not isinstance(definition.default, bool):
                value = int(value) if value is not None else definition.default
            if value == options.get(definition.key):
                continue
            try:
                options.set(definition.key, value)
                changed.append(definition.key)
            except ValueError as exc:
                errors.append(str(exc))
        if changed:
            options.save()
        if errors:
            raise gr.Error("; ".join(errors))
        return (
            f"{len(changed)} settings changed: {', '.join(changed)}." if changed else "No change."
        )

    apply.click(save, inputs=controls, outputs=result)
