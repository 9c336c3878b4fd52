"""The Upscale tab (A1111 "Extras"): one image, several files, or a folder on the server,
through an upscaler model (models/ESRGAN, RealESRGAN, SwinIR, DAT) or Lanczos/Nearest,
scaled by a factor or to a size, with an optional second upscaler blended in, then
GFPGAN and CodeFormer face restoration at their visibilities (A1111's sliders).

Queues an "extras" job (the worker owns the accelerator); results are saved to
outputs/extras-images, or under their own names into the batch output directory.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.params import ParamError
from ..core.params_img2img import ExtrasParams
from ..imaging.codec import ImageInputError, image_files, load_image_file
from ..services.upscalers import UnknownUpscalerError, Upscalers
from .common import InputError, owner_of
from .icons import icon_button
from .image_common import (
    Named,
    OutputPanel,
    checked_image,
    output_panel,
    require_server_folders,
    stream_job,
    whole,
)
from .job_stream import TabJobs, in_thread, submit_job

if TYPE_CHECKING:
    from ..context import AppContext


@dataclass
class ExtrasTab:
    image: Any
    output: OutputPanel


def build_extras_tab(ctx: AppContext) -> ExtrasTab:
    named = Named()
    catalog = ctx.upscalers
    with gr.Row():
        with gr.Column(scale=1):
            _sources(named, ctx.flags.server_folders_allowed)
            scale_tab = named.add("scale_tab", gr.State(0))
            with gr.Tabs():
                with gr.Tab("Scale by", id="extras_scale_by") as by_tab:
                    named.add(
                        "resize",
                        gr.Slider(
                            label="Resize",
                            minimum=1,
                            maximum=8,
                            step=0.05,
                            value=4,
                            elem_id="extras_upscaling_resize",
                        ),
                    )
                with gr.Tab("Scale to", id="extras_scale_to") as to_tab:
                    with gr.Row():
                        named.add("resize_w", gr.Number(label="Width", value=512, precision=0))
                        named.add("resize_h", gr.Number(label="Height", value=512, precision=0))
                        named.add("crop", gr.Checkbox(label="Crop to fit", value=True))
            by_tab.select(lambda: 0, outputs=scale_tab, show_progress="hidden")
            to_tab.select(lambda: 1, outputs=scale_tab, show_progress="hidden")
            names = catalog.names()
            with gr.Row():
                upscaler_1 = named.add(
                    "upscaler_1",
                    gr.Dropdown(
                        label="Upscaler 1",
                        choices=names,
                        value="Lanczos",
                        elem_id="extras_upscaler_1",
                    ),
                )
                upscaler_2 = named.add(
                    "upscaler_2",
                    gr.Dropdown(
                        label="Upscaler 2", choices=names, value="None", elem_id="extras_upscaler_2"
                    ),
                )
                refresh = icon_button("refresh", elem_id="extras_refresh")
            named.add(
                "visibility",
                gr.Slider(label="Upscaler 2 visibility", minimum=0, maximum=1, step=0.001, value=0),
            )
            _face_sliders(named)
            with gr.Accordion("Tiling", open=False):
                named.add(
                    "tile",
                    gr.Slider(
                        label="Tile size (0: no tiling)",
                        minimum=0,
                        maximum=1024,
                        step=16,
                        value=192,
                    ),
                )
                named.add(
                    "tile_overlap",
                    gr.Slider(label="Tile overlap", minimum=0, maximum=128, step=1, value=8),
                )
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
                interrupt = gr.Button("Interrupt", variant="stop", elem_id="extras_interrupt")
        with gr.Column(scale=1):
            output = output_panel(ctx, "extras", send_targets=("img2img", "inpaint"))
    tab_jobs = TabJobs()

    def submit(request: gr.Request, values: tuple) -> Any:  # reads image files: in a thread
        params = _params(named.values(values), catalog, ctx.flags.server_folders_allowed)
        return submit_job(ctx, request, "extras", params)

    async def run(request: gr.Request, *values):
        job = await in_thread(submit, request, values)
        async for outputs in stream_job(ctx, request, tab_jobs, job):
            yield outputs

    def interrupt_mine(request: gr.Request):
        ctx.jobs.interrupt_owner(owner_of(request))

    def refresh_names():
        choices = catalog.names()
        return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices)

    generate.click(
        run,
        inputs=named.inputs,
        outputs=output.outputs,
        concurrency_limit=None,
        show_progress="hidden",
        trigger_mode="multiple",
    )
    interrupt.click(interrupt_mine, concurrency_limit=None, show_progress="hidden")
    refresh.click(refresh_names, outputs=[upscaler_1, upscaler_2])
    return ExtrasTab(named["image"], output)


def _face_sliders(named: Named) -> None:
    """A1111's GFPGAN and CodeFormer sliders (0: off), run after the upscalers."""
    for name, label, elem_id in (
        ("gfpgan_visibility", "GFPGAN visibility", "extras_gfpgan_visibility"),
        ("codeformer_visibility", "CodeFormer visibility", "extras_codeformer_visibility"),
        ("codeformer_weight", "CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
         "extras_codeformer_weight"),
    ):  # fmt: skip
        named.add(name, gr.Slider(label=label, minimum=0, maximum=1, step=0.001, value=0,
                                  elem_id=elem_id))  # fmt: skip


def _sources(named: Named, server_folders: bool) -> None:
    source = named.add("source_tab", gr.State(0))
    with gr.Tabs():
        with gr.Tab("Single Image", id="extras_single") as single:
            named.add(
                "image",
                gr.Image(
                    label="Source",
                    type="pil",
                    sources=["upload", "clipboard"],
                    height=380,
                    elem_id="extras_image",
                ),
            )
        with gr.Tab("Batch Process", id="extras_batch") as batch:
            named.add(
                "files",
                gr.File(label="Batch Process", file_count="multiple", elem_id="extras_files"),
            )
        with gr.Tab("Batch from Directory", id="extras_dir", visible=server_folders) as folder:
            named.add("input_dir", gr.Textbox(label="Input directory"))
            named.add(
                "output_dir",
                gr.Textbox(label="Output directory", placeholder="empty: outputs/extras-images"),
            )
    for index, tab in enumerate((single, batch, folder)):
        tab.select(lambda i=index: i, outputs=source, show_progress="hidden")


def _images(v: dict, server_folders: bool) -> list[tuple[Any, str]]:
    if v["source_tab"] == 0:
        image = checked_image(v["image"], "Source")
        if image is None:
            raise InputError("Upload an image to upscale (or paste or drop one)")
        return [(image, "")]
    if v["source_tab"] == 1:
        paths = [p if isinstance(p, str) else getattr(p, "name", str(p)) for p in v["files"] or []]
        if not paths:
            raise InputError("Batch Process: add one or more image files")
        return [(load_image_file(p, "Batch Process"), Path(p).name) for p in paths]
    require_server_folders(server_folders)
    if not (v["input_dir"] or "").strip():
        raise InputError("Batch from Directory: enter the input directory")
    files = image_files(v["input_dir"], "Input directory")
    return [(load_image_file(p, "Input directory"), p.name) for p in files]


def _params(v: dict, catalog: Upscalers, server_folders: bool) -> ExtrasParams:
    try:
        images = _images(v, server_folders)
        params = ExtrasParams(
            images=tuple(images),
            resize_mode=int(v["scale_tab"]),
            upscaling_resize=float(v["resize"]),
            upscaling_resize_w=whole(v["resize_w"], "Width"),
            upscaling_resize_h=whole(v["resize_h"], "Height"),
            upscaling_crop=bool(v["crop"]),
            upscaler_1=catalog.resolve(v["upscaler_1"], field="Upscaler 1"),
            upscaler_2=catalog.resolve(v["upscaler_2"], field="Upscaler 2"),
            extras_upscaler_2_visibility=float(v["visibility"]),
            tile=whole(v["tile"], "Tile size"),
            tile_overlap=whole(v["tile_overlap"], "Tile overlap"),
            output_dir=(v["output_dir"] or "") if v["source_tab"] == 2 else "",
            gfpgan_visibility=float(v["gfpgan_visibility"]),
            codeformer_visibility=float(v["codeformer_visibility"]),
            codeformer_weight=float(v["codeformer_weight"]),
        )
        return params.validated()  # the face files are checked when the job is sent
    except (ParamError, ImageInputError, UnknownUpscalerError, TypeError, ValueError) as exc:
        raise InputError(str(exc)) from exc
