"""The style editor: apply chosen styles to the prompt boxes, save, edit and delete styles.

Styles live in styles.csv (`--styles-file`) through `core.styles.StyleDatabase`; choosing
styles in the "Styles" picker applies them at generation time, and "Apply styles to
prompt" writes them into the prompt boxes instead.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from ..core.styles import PromptStyle, StyleError

if TYPE_CHECKING:
    from ..context import AppContext


def build_style_editor(ctx: AppContext, prompt, negative, styles: gr.Dropdown, tab: str) -> None:
    database = ctx.networks.styles if ctx.networks else None
    if database is None:
        return
    with gr.Accordion("Style editor", open=False, elem_id=f"{tab}_style_editor"):
        name = gr.Dropdown(label="Style", choices=database.names(), value=None,
                           allow_custom_value=True, elem_id=f"{tab}_style_name")  # fmt: skip
        style_prompt = gr.Textbox(label="Style prompt", lines=2, elem_id=f"{tab}_style_prompt",
                                  placeholder="{prompt} marks where your prompt goes")  # fmt: skip
        style_negative = gr.Textbox(label="Style negative prompt", lines=2,
                                    elem_id=f"{tab}_style_negative")  # fmt: skip
        with gr.Row():
            apply = gr.Button("Apply styles to prompt", size="sm", elem_id=f"{tab}_style_apply")
            copy = gr.Button("Copy prompt to style", size="sm", elem_id=f"{tab}_style_copy")
            save = gr.Button(
                "Save style", size="sm", variant="primary", elem_id=f"{tab}_style_save"
            )
            delete = gr.Button(
                "Delete style", size="sm", variant="stop", elem_id=f"{tab}_style_delete"
            )
        status = gr.Markdown("", elem_id=f"{tab}_style_status")

    def load(style_name):
        style = database.get(style_name or "")
        if style is None:
            return gr.skip(), gr.skip()
        return style.prompt, style.negative_prompt

    def apply_to_prompt(chosen, prompt_, negative_):
        new_prompt, new_negative, missing = database.apply(
            chosen or [], prompt_ or "", negative_ or ""
        )
        note = f"Not found: {', '.join(missing)}" if missing else ""
        return new_prompt, new_negative, [], note

    def save_style(style_name, text, negative_text, chosen):
        try:
            database.save_style(
                PromptStyle((style_name or "").strip(), text or "", negative_text or "")
            )
        except (StyleError, OSError) as exc:
            return gr.skip(), gr.skip(), f"Not saved: {exc}"
        names = database.names()
        kept = [c for c in chosen or [] if c in names]
        return (gr.Dropdown(choices=names, value=style_name.strip()),
                gr.Dropdown(choices=names, value=kept), f"Saved style “{style_name.strip()}”.")  # fmt: skip

    def delete_style(style_name, chosen):
        try:
            database.delete(style_name or "")
        except (StyleError, OSError) as exc:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"Not deleted: {exc}"
        names = database.names()
        kept = [c for c in chosen or [] if c in names]
        return (gr.Dropdown(choices=names, value=None), gr.Dropdown(choices=names, value=kept),
                "", "", f"Deleted style “{style_name}”.")  # fmt: skip

    name.change(load, inputs=name, outputs=[style_prompt, style_negative], show_progress="hidden")
    apply.click(apply_to_prompt, inputs=[styles, prompt, negative],
                outputs=[prompt, negative, styles, status])  # fmt: skip
    copy.click(
        lambda p, n: (p, n), inputs=[prompt, negative], outputs=[style_prompt, style_negative]
    )
    save.click(save_style, inputs=[name, style_prompt, style_negative, styles],
               outputs=[name, styles, status])  # fmt: skip
    delete.click(delete_style, inputs=[name, styles],
                 outputs=[name, styles, style_prompt, style_negative, status])  # fmt: skip
