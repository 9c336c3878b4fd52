"""The whole Gradio UI: checkpoint picker on top, one tab per mode, a footer.

`build_ui(ctx)` is called once by the composition root. Tabs are added here as they are
built; there are no placeholder tabs.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import gradio as gr

from .. import __version__
from .browser_tab import build_browser_tab, connect_browser_upscale
from .ext_ui import build_extension_tabs
from .extensions_tab import build_extensions_tab
from .extras_tab import build_extras_tab
from .family_preset import connect_start_preset
from .habits import HABITS_CSS, connect_habits, habits_head
from .i18n import head_html
from .icons import ICONS_CSS, LABELS_JS
from .img2img_tab import build_img2img_tab
from .inpaint_tab import build_inpaint_tab
from .merger_tab import build_merger_tab
from .models_tab import build_models_tab
from .paste import connect_parameter_copy
from .pnginfo_tab import build_pnginfo_tab
from .queue_panel import build_queue_panel
from .quicksettings import TAB_MIRRORS, build_quicksettings, connect_quicksettings, follow_option
from .send_to import connect_send_buttons
from .settings_tab import build_settings_tab
from .train_tab import build_train_tab
from .train_ti import build_ti_tab
from .txt2img import build_txt2img_tab
from .ui_defaults import apply_ui_defaults, build_defaults_section

if TYPE_CHECKING:
    from ..context import AppContext

CSS = """
.job-progress { position: relative; height: 1.6em; border-radius: 6px; overflow: hidden;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.job-progress-fill { position: absolute; inset: 0 auto 0 0; background: var(--color-accent);
  opacity: .45; transition: width .2s; }
.job-progress-text { position: relative; padding-left: .5em; font-size: .9em; }
.live-preview { display: block; max-width: 100%; max-height: 512px; margin-top: 6px;
  border-radius: 6px; }
.live-preview[hidden] { display: none; }
.infotext { white-space: pre-wrap; word-break: break-word; font-size: .85em; margin: 0; }
.queue-table { width: 100%; border-collapse: collapse; font-size: .9em; }
.queue-table th, .queue-table td { padding: .25em .5em; text-align: left;
  border-bottom: 1px solid var(--border-color-primary); }
.queue-table tr.mine { background: var(--background-fill-secondary); }
.queue-table tr.running { font-weight: 600; }
.queue-table .job-progress { min-width: 8em; }
.queue-prompt { max-width: 28em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.ext-table { width: 100%; border-collapse: collapse; font-size: .9em; }
.ext-table th, .ext-table td { padding: .25em .5em; text-align: left; vertical-align: top;
  border-bottom: 1px solid var(--border-color-primary); }
.ext-failed { color: var(--error-text-color, #c00); }
#txt2img_paste { min-width: 40px; }
.settings-section-title h3 { margin: .4em .6em; }
#settings_search { min-width: 16em; }
.queue-action { margin-right: .3em; padding: .1em .5em; border-radius: 4px;
  border: 1px solid var(--border-color-primary); background: var(--button-secondary-background-fill); }
"""
CSS += ICONS_CSS + HABITS_CSS
# Result galleries show every image whole: a cell is never taller than the window (Gradio's
# square cells at a fixed gallery height cut off the bottom of a square result).
CSS += """
.result-gallery { height: auto !important; }
.result-gallery .grid-wrap { height: auto !important; max-height: none; overflow-y: visible; }
.result-gallery .thumbnail-item { aspect-ratio: auto; height: auto; max-height: var(--cell-max, 70vh);
  display: flex; align-items: center; justify-content: center; }
.result-gallery .thumbnail-item > img { width: 100%; height: auto; max-height: var(--cell-max, 70vh);
  object-fit: contain; }
#my_job_gallery { --cell-max: 45vh; }
.browser-file { font-size: .85em; word-break: break-all; margin: .2em 0; }
"""


def build_ui(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="Stable Diffusion web UI", analytics_enabled=False) as demo:
        quick = build_quicksettings(ctx)
        checkpoint = quick.checkpoint
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = build_txt2img_tab(ctx, checkpoint)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = build_img2img_tab(ctx, checkpoint)
            with gr.Tab("Inpaint", id="inpaint", elem_id="tab_inpaint"):
                inpaint = build_inpaint_tab(ctx, checkpoint)
            with gr.Tab("Upscale", id="extras", elem_id="tab_extras"):
                extras = build_extras_tab(ctx)
            with gr.Tab("PNG Info", id="pnginfo"):
                build_pnginfo_tab(ctx)
            browser = None
            if ctx.browser is not None:  # outputs/ indexed, searchable, on a similarity map
                with gr.Tab("Image Browser", id="image_browser") as browser_tab:
                    browser = build_browser_tab(ctx, browser_tab)
            with gr.Tab("Checkpoint Merger", id="modelmerger", elem_id="tab_modelmerger"):
                build_merger_tab(ctx, checkpoint)
            with gr.Tab("Train", id="train", elem_id="tab_train"), gr.Tabs():
                with gr.Tab("LoRA", id="train_lora", elem_id="tab_train_lora"):
                    build_train_tab(ctx)  # LoRA training on the queue
                with gr.Tab("Textual inversion", id="train_ti", elem_id="tab_train_ti"):
                    build_ti_tab(ctx)  # create and train embeddings on the queue
            build_extension_tabs(ctx)  # each extension's own tab
            generation = {"txt2img": txt2img, "img2img": img2img, "inpaint": inpaint}
            defaults = apply_ui_defaults(ctx, {k: tab.named for k, tab in generation.items()})
            with gr.Tab("Settings", id="settings"):
                settings = build_settings_tab(ctx, demo, checkpoint)
                build_defaults_section(ctx, defaults)
            with gr.Tab("Extensions", id="extensions"):
                build_extensions_tab(ctx)
            with gr.Tab("Models", id="models", elem_id="tab_models"):
                build_models_tab(ctx, demo)
        for key, name in TAB_MIRRORS.items():
            follow_option(quick, key, [tab[name] for tab in generation.values()])
        connect_quicksettings(ctx, demo, quick, settings)
        connect_habits(ctx, demo, settings, generation)
        connect_send_buttons(ctx, demo, tabs, txt2img, img2img, inpaint, extras)
        if browser is not None:
            connect_browser_upscale(browser, tabs, extras.image)
        connect_parameter_copy(demo, ctx)  # ↙️ and PNG Info's send-to fill every control
        build_queue_panel(ctx, demo)
        gr.HTML(footer_text(ctx), elem_id="footer")
        loaded = demo.load(quick.refresh_checkpoints, outputs=[checkpoint, quick.notice],
                           show_progress="hidden")  # fmt: skip
        # the start-up checkpoint's family preset (unless ui-config.json sets the control)
        connect_start_preset(ctx, loaded, checkpoint,
                             {k: tab.named for k, tab in generation.items()}, defaults.saved)  # fmt: skip
    return demo


def page_head(ctx: AppContext) -> str:
    """What goes into the page's <head>: the translation script, the icon labels, then the
    keyboard habits (Ctrl+Enter, Escape, Ctrl+up/down, Generate forever, the sound)."""
    return f"{head_html(ctx)}\n<script>{LABELS_JS}</script>\n{habits_head(ctx)}"


def footer_text(ctx: AppContext) -> str:
    """Version, device and memory plan, and the API docs link; each part its own element,
    so that the page's translation finds it."""
    parts = [f"version v{__version__}", *ctx.memory.description.split(" · ")]
    text = " · ".join(f"<span>{html.escape(part)}</span>" for part in parts)
    if ctx.flags.api:
        text += ' · <span>API:</span> <a href="docs">/docs</a>'
    return text
