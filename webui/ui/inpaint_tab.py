"""The Inpaint tab: paint a mask over the image in the browser (brush size, eraser, undo,
clear, zoom and pan come with Gradio's image editor) or upload one, and redraw only there.

Mask mode (invert), mask blur, masked content, inpaint area (whole picture / only masked
with padding) and outpainting (grow the canvas by N pixels per side and fill the new
area) and soft inpainting (`soft_inpainting_ui`) as in A1111. Whether the checkpoint is a 9-channel inpainting model is read from
the loaded model, not asked. Jobs are "img2img" jobs with a mask. The prompts, sampler,
size, seed, scripts, output and job wiring come from `generation_tab`.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.params_img2img import Img2ImgParams, round_to_8
from ..imaging.codec import ImageInputError, mask_from_layers, mask_from_upload, to_rgb
from ..imaging.masks import MASKED_CONTENT
from .common import InputError
from .generation_tab import GenerationTab, TabSpec, build_generation_tab, common_fields
from .image_common import Named, checked_image, whole
from .soft_inpainting_ui import soft_inpainting_inputs, soft_inpainting_params

if TYPE_CHECKING:
    from ..context import AppContext

SIDES = ("left", "right", "up", "down")


def _inputs(ctx: AppContext, named: Named) -> None:
    """The image and its mask, and how the masked area is redrawn."""
    _mask_inputs(named)
    with gr.Row():
        named.add("mask_mode", gr.Radio(
            label="Mask mode", type="index", value="Inpaint masked",
            choices=["Inpaint masked", "Inpaint not masked"]))  # fmt: skip
        named.add("mask_blur", gr.Slider(label="Mask blur", minimum=0, maximum=64, step=1, value=4))
    named.add("fill", gr.Radio(
        label="Masked content", choices=list(MASKED_CONTENT), value="original", type="index"))  # fmt: skip
    with gr.Row():
        named.add("area", gr.Radio(
            label="Inpaint area", type="index", value="Whole picture",
            choices=["Whole picture", "Only masked"]))  # fmt: skip
        named.add("padding", gr.Slider(
            label="Only masked padding, pixels", minimum=0, maximum=256, step=4, value=32))  # fmt: skip
    with gr.Accordion("Outpainting", open=False, elem_id="inpaint_outpaint"):
        gr.Markdown(
            "Grow the canvas and fill the new area. With *Whole picture* the "
            "output takes the new canvas size (rounded to multiples of 8)."
        )
        with gr.Row():
            for side in SIDES:
                named.add(f"out_{side}", gr.Slider(
                    label=f"Outpaint {side}, pixels", minimum=0, maximum=512, step=8, value=0))  # fmt: skip
    soft_inpainting_inputs(named)


def _mask_inputs(named: Named) -> None:
    source = named.add("mask_source", gr.State(0))
    with gr.Tabs():
        with gr.Tab("Draw mask", id="inpaint_draw") as draw_tab:
            named.add(
                "editor",
                gr.ImageEditor(
                    label="Image for inpainting with mask",
                    type="pil",
                    image_mode="RGBA",
                    sources=["upload", "clipboard"],
                    layers=False,
                    transforms=(),
                    height=480,
                    brush=gr.Brush(
                        colors=[("#ffffff", 0.75)], color_mode="fixed", default_size="auto"
                    ),
                    eraser=gr.Eraser(default_size="auto"),
                    elem_id="inpaint_editor",
                ),
            )
            gr.Markdown(
                "Paint over what should change. Brush size, eraser, undo, clear and "
                "zoom are in the editor's toolbar.",
                elem_id="inpaint_help",
            )
        with gr.Tab("Upload mask", id="inpaint_upload") as upload_tab:
            with gr.Row():
                named.add(
                    "upload_image",
                    gr.Image(label="Image", type="pil", sources=["upload", "clipboard"]),
                )
                named.add(
                    "upload_mask",
                    gr.Image(
                        label="Mask (white = inpaint)",
                        type="pil",
                        image_mode=None,
                        sources=["upload"],
                    ),
                )
    draw_tab.select(lambda: 0, outputs=source, show_progress="hidden")
    upload_tab.select(lambda: 1, outputs=source, show_progress="hidden")


def _image_and_mask(v: dict):
    if v["mask_source"] == 1:
        image = checked_image(v["upload_image"], "Image")
        if image is None:
            raise InputError("Upload the image to inpaint")
        if v["upload_mask"] is None:
            raise InputError("Upload a mask (white = the area to inpaint)")
        return image, mask_from_upload(v["upload_mask"], image.size)
    editor = v["editor"] or {}
    background = editor.get("background")
    if background is None:
        raise InputError("Upload an image to inpaint (or paste or drop one)")
    checked_image(background, "Image for inpainting")
    return to_rgb(background), mask_from_layers(editor.get("layers") or [], background.size)


def _params(ctx: AppContext, v: dict[str, Any]) -> Img2ImgParams:
    try:
        image, mask = _image_and_mask(v)
    except ImageInputError as exc:
        raise InputError(str(exc)) from exc
    outpaint = tuple(whole(v[f"out_{side}"], f"Outpaint {side}") for side in SIDES)
    if mask is None and not any(outpaint):
        raise InputError("The mask is empty: paint over the area to change, or upload a mask")
    canvas = (image.width + outpaint[0] + outpaint[1], image.height + outpaint[2] + outpaint[3])
    fields = common_fields(v, canvas)
    only_masked = v["area"] == 1
    if any(outpaint) and not only_masked and v["size_tab"] == 0:
        fields["width"], fields["height"] = round_to_8(canvas[0]), round_to_8(canvas[1])
    blur = whole(v["mask_blur"], "Mask blur")
    return Img2ImgParams(
        **fields,
        init_images=(image,),
        mask=mask,
        mask_blur_x=blur,
        mask_blur_y=blur,
        inpainting_fill=int(v["fill"]),
        inpaint_full_res=only_masked,
        inpaint_full_res_padding=whole(v["padding"], "Only masked padding"),
        inpainting_mask_invert=v["mask_mode"] == 1,
        outpaint=outpaint,
        soft_inpainting=soft_inpainting_params(v),
    )


INPAINT = TabSpec(prefix="inpaint", kind="img2img", scripts_of="img2img", params=_params,
                  inputs=_inputs, resize=True)  # fmt: skip


def build_inpaint_tab(ctx: AppContext, checkpoint: gr.Dropdown) -> GenerationTab:
    return build_generation_tab(ctx, checkpoint, INPAINT)
