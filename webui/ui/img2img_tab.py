"""The img2img tab: the shared generation frame plus an init image (upload, paste or drag,
or "send to img2img") or a batch folder, and SD upscale (tiles at the model's size);
the Interrogate buttons under Generate (`interrogate_ui`) turn the image into a prompt.

The prompts, sampler, "Resize to / Resize by", denoising strength, seed, scripts, output
and job wiring come from `generation_tab`; this module adds its own inputs and turns the
values into `Img2ImgParams`.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.params_img2img import Img2ImgParams, SDUpscaleParams
from ..services.upscalers import UnknownUpscalerError
from .common import InputError
from .generation_tab import GenerationTab, TabSpec, build_generation_tab, common_fields
from .icons import icon_button
from .image_common import Named, checked_image, require_server_folders, whole
from .interrogate_ui import interrogate_buttons, wire_interrogate
from .refiner_controls import add_refiner_controls, refiner_fields
from .soft_inpainting_ui import soft_inpainting_inputs, soft_inpainting_params

if TYPE_CHECKING:
    from ..context import AppContext


def _inputs(ctx: AppContext, named: Named) -> None:
    """The init image, or a batch folder on the server."""
    source_tab = named.add("source_tab", gr.State(0))
    with gr.Tabs():
        with gr.Tab("img2img", id="img2img_single") as single_tab:
            named.add("image", gr.Image(
                label="Image for img2img", type="pil", sources=["upload", "clipboard"],
                height=420, elem_id="img2img_image"))  # fmt: skip
        with gr.Tab(
            "Batch", id="img2img_batch", visible=ctx.flags.server_folders_allowed
        ) as batch_tab:
            gr.Markdown(
                "Every image of the input directory (on the server), with these "
                "settings; results keep the input file names."
            )
            named.add("input_dir", gr.Textbox(label="Input directory"))
            named.add("output_dir", gr.Textbox(
                label="Output directory", placeholder="empty: outputs/img2img-images"))  # fmt: skip
            named.add("mask_dir", gr.Textbox(
                label="Inpaint batch mask directory (masks with the same file names, "
                "or one mask for all)"))  # fmt: skip
    soft_inpainting_inputs(named, elem_id="img2img_soft_inpainting")  # batch with masks
    single_tab.select(lambda: 0, outputs=source_tab, show_progress="hidden")
    batch_tab.select(lambda: 1, outputs=source_tab, show_progress="hidden")


def _sd_upscale(ctx: AppContext, named: Named) -> None:
    catalog = ctx.upscalers
    with gr.Accordion("SD upscale", open=False, elem_id="img2img_sd_upscale"):
        named.add("sd_enable", gr.Checkbox(label="Enable SD upscale", value=False))
        with gr.Row():
            upscaler = named.add("sd_upscaler", gr.Dropdown(
                label="Upscaler", choices=catalog.names(), value="Lanczos", scale=4))  # fmt: skip
            refresh = icon_button("refresh", elem_id="img2img_sd_upscale_refresh")
        named.add("sd_scale", gr.Slider(
            label="Scale Factor", minimum=1.0, maximum=4.0, step=0.05, value=2.0))  # fmt: skip
        named.add("sd_overlap", gr.Slider(
            label="Tile overlap", minimum=0, maximum=256, step=16, value=64))  # fmt: skip
        gr.Markdown("Tiles are Width x Height; each is redrawn with this checkpoint.")
    refresh.click(lambda: gr.Dropdown(choices=catalog.names()), outputs=upscaler)


def _params(ctx: AppContext, v: dict[str, Any]) -> Img2ImgParams:
    if v["source_tab"] == 1:
        require_server_folders(ctx.flags.server_folders_allowed)
        if not (v["input_dir"] or "").strip():
            raise InputError("Batch: enter the input directory")
        soft = _batch_soft_inpainting(v)
        return Img2ImgParams(
            **common_fields(v),
            batch_input_dir=v["input_dir"] or "",
            batch_output_dir=v["output_dir"] or "",
            batch_mask_dir=v["mask_dir"] or "",
            soft_inpainting=soft,
            **refiner_fields(v),
        )
    if v["soft_enabled"]:
        raise InputError(
            "Soft inpainting needs a mask: use the Inpaint tab, or a batch mask directory"
        )
    image = checked_image(v["image"], "Image for img2img")
    if image is None:
        raise InputError("Upload an image for img2img first (or paste or drop one)")
    sd = None
    if v["sd_enable"]:
        try:
            upscaler = ctx.upscalers.resolve(v["sd_upscaler"])
        except UnknownUpscalerError as exc:
            raise InputError(str(exc)) from None
        sd = SDUpscaleParams(upscaler=upscaler, scale=float(v["sd_scale"]),
                             overlap=whole(v["sd_overlap"], "Tile overlap"))  # fmt: skip
    return Img2ImgParams(**common_fields(v, image.size), init_images=(image,), sd_upscale=sd,
                         **refiner_fields(v))  # fmt: skip


def _extras(ctx: AppContext, named: Named) -> None:
    """SD upscale and the Refiner."""
    _sd_upscale(ctx, named)
    add_refiner_controls(ctx, named, "img2img")


def _batch_soft_inpainting(v: dict[str, Any]):
    settings = soft_inpainting_params(v)
    if settings is not None and not (v["mask_dir"] or "").strip():
        raise InputError("Soft inpainting needs a mask: enter the inpaint batch mask directory")
    return settings


IMG2IMG = TabSpec(prefix="img2img", kind="img2img", scripts_of="img2img", params=_params,
                  inputs=_inputs, extras=_extras, resize=True,
                  prompt_buttons=lambda ctx: interrogate_buttons("img2img"))  # fmt: skip


def build_img2img_tab(ctx: AppContext, checkpoint: gr.Dropdown) -> GenerationTab:
    tab = build_generation_tab(ctx, checkpoint, IMG2IMG)
    wire_interrogate(ctx, tab.extra, tab["image"], tab["prompt"])  # Interrogate CLIP, ...
    return tab
