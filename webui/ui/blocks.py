"""The whole Gradio UI: checkpoint picker on top, one tab per mode, a footer.

`build_ui(ctx)` is called once by the composition root. Tabs are added here as they are
built; there are no placeholder tabs.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from .. import __version__
from .common import checkpoint_picker
from .settings_tab import build_settings_tab
from .txt2img import build_txt2img_tab

if TYPE_CHECKING:
    from ..context import AppContext

CSS = """
.job-progress { position: relative; height: 1.6em; border-radius: 6px; overflow: hidden;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.job-progress-fill { position: absolute; inset: 0 auto 0 0; background: var(--color-accent);
  opacity: .45; transition: width .2s; }
.job-progress-text { position: relative; padding-left: .5em; font-size: .9em; }
.infotext { white-space: pre-wrap; word-break: break-word; font-size: .85em; margin: 0; }
#refresh_checkpoints, #txt2img_random_seed, #txt2img_reuse_seed { align-self: end; }
"""


def build_ui(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="Stable Diffusion web UI", analytics_enabled=False) as demo:
        checkpoint, notice, refresh_checkpoints = checkpoint_picker(ctx)
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", id="txt2img"):
                build_txt2img_tab(ctx, checkpoint)
            with gr.Tab("Settings", id="settings"):
                build_settings_tab(ctx)
        gr.Markdown(footer_text(ctx), elem_id="footer")
        demo.load(refresh_checkpoints, outputs=[checkpoint, notice], show_progress="hidden")
    return demo


def footer_text(ctx: AppContext) -> str:
    api = " · API: [/docs](/docs)" if ctx.flags.api else ""
    return f"version v{__version__} · {ctx.memory.description}{api}"
