"""The img2img tab: an init image (upload, paste or drag, or "send to img2img"), or a batch
folder, redrawn at a denoising strength; optionally SD upscale (tiles at the model's size).

Controls carry A1111's labels. The handler builds validated `Img2ImgParams`, queues an
"img2img" job for this browser and streams its progress (`image_common.stream_job`).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.params import ParamError
from ..core.params_img2img import Img2ImgParams, SDUpscaleParams
from ..imaging.upscaler_list import UnknownUpscalerError, UpscalerCatalog
from .common import InputError, owner_of
from .ext_ui import extension_inputs
from .icons import icon_button
from .image_common import (
    Named,
    OutputPanel,
    checked_image,
    generation_settings,
    output_panel,
    prompt_row,
    require_server_folders,
    settings_kwargs,
    stream_job,
    whole,
)
from .job_stream import TabJobs, in_thread

if TYPE_CHECKING:
    from ..context import AppContext


@dataclass
class Img2ImgTab:
    image: Any
    prompt: Any
    negative: Any
    output: OutputPanel


def build_img2img_tab(ctx: AppContext, checkpoint: gr.Dropdown) -> Img2ImgTab:
    named = Named()
    named.add("checkpoint", checkpoint)
    generate, interrupt = prompt_row(named, "img2img")
    catalog = UpscalerCatalog(ctx.flags.models_dir)
    with gr.Row():
        with gr.Column(scale=1):
            source_tab = named.add("source_tab", gr.State(0))
            with gr.Tabs():
                with gr.Tab("img2img", id="img2img_single") as single_tab:
                    named.add(
                        "image",
                        gr.Image(
                            label="Image for img2img",
                            type="pil",
                            sources=["upload", "clipboard"],
                            height=420,
                            elem_id="img2img_image",
                        ),
                    )
                with gr.Tab(
                    "Batch", id="img2img_batch", visible=ctx.flags.server_folders_allowed
                ) as batch_tab:
                    gr.Markdown(
                        "Every image of the input directory (on the server), with these "
                        "settings; results keep the input file names."
                    )
                    named.add("input_dir", gr.Textbox(label="Input directory"))
                    named.add(
                        "output_dir",
                        gr.Textbox(
                            label="Output directory", placeholder="empty: outputs/img2img-images"
                        ),
                    )
                    named.add(
                        "mask_dir",
                        gr.Textbox(
                            label="Inpaint batch mask directory (masks with the same file names, "
                            "or one mask for all)"
                        ),
                    )
            single_tab.select(lambda: 0, outputs=source_tab, show_progress="hidden")
            batch_tab.select(lambda: 1, outputs=source_tab, show_progress="hidden")
            generation_settings(named, "img2img")
            with gr.Accordion("SD upscale", open=False, elem_id="img2img_sd_upscale"):
                named.add("sd_enable", gr.Checkbox(label="Enable SD upscale", value=False))
                with gr.Row():
                    upscaler = named.add(
                        "sd_upscaler",
                        gr.Dropdown(
                            label="Upscaler", choices=catalog.names(), value="Lanczos", scale=4
                        ),
                    )
                    refresh = icon_button("refresh", elem_id="img2img_sd_upscale_refresh")
                named.add(
                    "sd_scale",
                    gr.Slider(label="Scale Factor", minimum=1.0, maximum=4.0, step=0.05, value=2.0),
                )
                named.add(
                    "sd_overlap",
                    gr.Slider(label="Tile overlap", minimum=0, maximum=256, step=16, value=64),
                )
                gr.Markdown("Tiles are Width x Height; each is redrawn with this checkpoint.")
            ext = extension_inputs(ctx, "img2img", named=named)  # extension sections, Script
        with gr.Column(scale=1):
            output = output_panel("img2img")
    tab_jobs = TabJobs()

    def prepare(values: tuple) -> Any:
        v = named.values(values)
        params = ext.apply(_params(ctx, v, catalog), v)  # + script and extension args
        if not ctx.models.checkpoints():
            raise InputError(
                "No checkpoint: add one to the models folder and press the refresh button next to the checkpoint list."
            )
        return params

    async def run(request: gr.Request, *values):
        params = await in_thread(prepare, values)
        async for outputs in stream_job(ctx, request, tab_jobs, "img2img", params):
            yield outputs

    def interrupt_mine(request: gr.Request):
        ctx.jobs.interrupt_owner(owner_of(request))

    for trigger in (generate.click, named["prompt"].submit):
        trigger(
            run,
            inputs=named.inputs,
            outputs=output.outputs,
            concurrency_limit=None,
            show_progress="hidden",
            trigger_mode="multiple",
        )
    interrupt.click(interrupt_mine, concurrency_limit=None, show_progress="hidden")
    refresh.click(lambda: gr.Dropdown(choices=catalog.names()), outputs=upscaler)
    return Img2ImgTab(named["image"], named["prompt"], named["negative"], output)


def _params(ctx: AppContext, v: dict, catalog: UpscalerCatalog) -> Img2ImgParams:
    try:
        if v["source_tab"] == 1:
            require_server_folders(ctx.flags.server_folders_allowed)
            params = Img2ImgParams(
                **settings_kwargs(v, None),
                batch_input_dir=v["input_dir"] or "",
                batch_output_dir=v["output_dir"] or "",
                batch_mask_dir=v["mask_dir"] or "",
            )
            if not params.batch_input_dir.strip():
                raise InputError("Batch: enter the input directory")
        else:
            image = checked_image(v["image"], "Image for img2img")
            if image is None:
                raise InputError("Upload an image for img2img first (or paste or drop one)")
            sd = None
            if v["sd_enable"]:
                sd = SDUpscaleParams(
                    upscaler=catalog.resolve(v["sd_upscaler"]),
                    scale=float(v["sd_scale"]),
                    overlap=whole(v["sd_overlap"], "Tile overlap"),
                )
            params = Img2ImgParams(
                **settings_kwargs(v, image.size), init_images=(image,), sd_upscale=sd
            )
        return params.validated().with_seed()
    except (ParamError, UnknownUpscalerError, TypeError, ValueError) as exc:
        raise InputError(str(exc)) from exc
