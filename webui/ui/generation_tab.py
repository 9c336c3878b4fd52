"""One builder for the generation tabs: txt2img, img2img and Inpaint.

Every generation tab has the same frame, built here once: the prompt row (prompt,
negative prompt, Generate, Interrupt, read parameters), the prompt tools (styles, SD VAE,
extra networks), the sampler, size, batch, tiling, CFG, seed (random, reuse, and the
"Extra" variation seed rows of `webui.ui.seed_controls`), clip skip and sampler-parameter
controls (`sampler_controls`), the extension sections and the Script list, the output
column, and the wiring that turns a click into a job and follows it. A tab brings only
what is its own
(`TabSpec`): inputs above the settings (the init image, the mask), controls after them
(hires. fix, SD upscale), whether sizes are "Resize to / Resize by" with a denoising
strength, and how its values become params.

Controls are named (`Named`); handlers read values by name, never by position. Controls
carry A1111's labels as their accessible names (PNG Info and "send to" find them by label).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.jobs import Job
from ..core.params import ParamError
from ..core.params_img2img import size_for_scale
from ..core.samplers import SAMPLERS, SCHEDULE_TYPES
from ..imaging.masks import RESIZE_MODES
from .adetailer_ui import add_adetailer_controls, detailer_request
from .common import InputError, owner_of
from .controlnet_ui import add_controlnet_controls, controlnet_request
from .ext_ui import extension_inputs
from .extra_networks import build_prompt_tools, job_warnings
from .family_preset import wire_family_preset
from .habits import started_js
from .icons import icon_button
from .image_common import Named, OutputPanel, finished_outputs, output_panel, whole
from .job_stream import TabJobs, finished_status, follow_job, in_thread, submit_job
from .module_controls import add_module_control, module_overrides
from .sampler_controls import add_sampler_parameters, add_tiling, sampling_fields
from .sd3_controls import SHIFT_INFO, shift_value, wire_shift_controls
from .seed_controls import build_seed_controls, seed_fields, wire_seed_buttons
from .slg_controls import add_slg_controls, slg_fields, wire_slg_controls
from .speed_controls import add_speed_controls, speed_overrides

if TYPE_CHECKING:
    from ..context import AppContext

DEFAULT_SAMPLER = "DPM++ 2M" if "DPM++ 2M" in SAMPLERS else SAMPLERS[0]


@dataclass(frozen=True)
class TabSpec:
    """What one generation tab adds to the shared frame."""

    prefix: str  # elem_id prefix: txt2img, img2img, inpaint
    kind: str  # job kind: txt2img, img2img
    scripts_of: str  # whose extension sections and scripts it shows: txt2img or img2img
    params: Callable[[AppContext, dict[str, Any]], Any]  # (ctx, values by name) -> params
    inputs: Callable[[AppContext, Named], None] | None = None  # above the settings
    extras: Callable[[AppContext, Named], None] | None = None  # after the settings
    resize: bool = False  # resize mode, "Resize to / Resize by" and denoising strength
    denoising: float = 0.75
    send_targets: tuple[str, ...] = ("img2img", "inpaint", "extras")
    prompt_buttons: Callable[[AppContext], dict[str, Any]] | None = None  # under Generate


@dataclass
class GenerationTab:
    named: Named
    output: OutputPanel
    extra: dict[str, Any] = field(default_factory=dict)  # what `spec.prompt_buttons` made
    runs: list[Any] = field(default_factory=list)  # the run events (Generate, prompt submit)

    def __getitem__(self, name: str):
        return self.named[name]


def build_generation_tab(ctx: AppContext, checkpoint: gr.Dropdown, spec: TabSpec) -> GenerationTab:
    named = Named()
    named.add("checkpoint", checkpoint)
    generate, interrupt, buttons = _prompt_row(ctx, named, checkpoint, spec)
    with gr.Row():
        with gr.Column(scale=1):
            if spec.inputs is not None:
                spec.inputs(ctx, named)
            _settings(named, spec)
            if spec.extras is not None:
                spec.extras(ctx, named)
            add_adetailer_controls(ctx, named, spec.prefix, spec.kind)
            add_controlnet_controls(ctx, named, spec.prefix, spec.kind, checkpoint)
            ext = extension_inputs(ctx, spec.scripts_of, prefix=spec.prefix, named=named)
        with gr.Column(scale=1):
            output = output_panel(ctx, spec.prefix, send_targets=spec.send_targets)
    last_seed, last_subseed = gr.State(None), gr.State(None)
    tab_jobs = TabJobs()  # this tab's unfinished jobs, per page

    def submit(request: gr.Request, values: tuple) -> Job:  # in a worker thread (see run)
        v = named.values(values)
        try:
            params = spec.params(ctx, v)
        except (ParamError, TypeError, ValueError) as exc:
            raise InputError(str(exc)) from exc
        args = ext.request_args(v)
        args["alwayson"] = {**(args.get("alwayson") or {}), **detailer_request(v)}  # ADetailer
        args["alwayson"].update(controlnet_request(v))  # ControlNet units
        # the Speed accordion's and the "VAE / Text Encoder" values, as override settings
        overrides = {**speed_overrides(v), **module_overrides(v)}
        if overrides:
            args["override_settings"] = {**(args.get("override_settings") or {}), **overrides}
        return submit_job(ctx, request, spec.kind, params, **args)

    async def run(request: gr.Request, *values):
        # reading the images and validating take a thread, never the event loop that
        # streams every page's progress
        job = await in_thread(submit, request, values)
        async for update in follow_job(ctx, request, tab_jobs, job):
            finished = update.finished
            if finished is None:
                yield update.progress, update.gallery, *[gr.skip()] * (len(outputs) - 2)
                continue
            result = finished.result
            yield (
                finished_status(finished, update.waiting) + job_warnings(result),
                *finished_outputs(finished.images),
                result.params.seed if result is not None else gr.skip(),
                result.params.subseed if result is not None else gr.skip(),
            )

    def interrupt_mine(request: gr.Request):
        ctx.jobs.interrupt_owner(owner_of(request))

    outputs = [*output.outputs, last_seed, last_subseed]
    runs = []
    for trigger in (generate.click, named["prompt"].submit):
        event = trigger(run, inputs=named.inputs, outputs=outputs, concurrency_limit=None,
                        show_progress="hidden", trigger_mode="multiple",
                        js=started_js(spec.prefix))  # fmt: skip
        runs.append(event)
    interrupt.click(interrupt_mine, concurrency_limit=None, show_progress="hidden")
    wire_seed_buttons(named, last_seed, last_subseed)
    wire_family_preset(ctx, checkpoint, named)  # FLUX.1 dev, SD 3.5, Z-Image Turbo
    wire_shift_controls(ctx, checkpoint, named)  # SD 3.5, FLUX.1, Z-Image
    wire_slg_controls(ctx, checkpoint, named)  # SD 3.5
    return GenerationTab(named, output, extra=buttons, runs=runs)


def _prompt_row(ctx: AppContext, named: Named, checkpoint, spec: TabSpec):
    """Prompt, negative prompt, their tools; Generate, Interrupt, read parameters and the
    tab's own buttons (img2img: Interrogate)."""
    prefix = spec.prefix
    with gr.Row():
        with gr.Column(scale=6):
            prompt = named.add(
                "prompt",
                gr.Textbox(
                    label="Prompt", lines=3, placeholder="Prompt", elem_id=f"{prefix}_prompt"
                ),
            )
            negative = named.add("negative", gr.Textbox(
                label="Negative prompt", lines=2, placeholder="Negative prompt",
                elem_id=f"{prefix}_neg_prompt"))  # fmt: skip
            tools = build_prompt_tools(ctx, prompt, negative, checkpoint, prefix)
            named.add("styles", tools.styles)
            named.add("vae", tools.vae)
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
            interrupt = gr.Button("Interrupt", variant="stop", elem_id=f"{prefix}_interrupt")
            icon_button("paste", elem_id=f"{prefix}_paste", scale=None)  # wired by paste.py
            buttons = spec.prompt_buttons(ctx) if spec.prompt_buttons is not None else {}
    return generate, interrupt, buttons


def _settings(named: Named, spec: TabSpec) -> None:
    """Sampler, size, batch, CFG (and denoising), seed and clip skip."""
    prefix = spec.prefix
    if spec.resize:
        named.add("resize_mode", gr.Radio(
            label="Resize mode", choices=list(RESIZE_MODES), value=RESIZE_MODES[0],
            type="index", elem_id=f"{prefix}_resize_mode"))  # fmt: skip
    with gr.Row():
        named.add("sampler", gr.Dropdown(
            label="Sampling method", choices=SAMPLERS, value=DEFAULT_SAMPLER,
            elem_id=f"{prefix}_sampling"))  # fmt: skip
        named.add("schedule", gr.Dropdown(
            label="Schedule type", choices=SCHEDULE_TYPES, value="Automatic",
            elem_id=f"{prefix}_scheduler"))  # fmt: skip
    named.add("steps", _slider("Sampling steps", 1, 150, 1, 20))
    if spec.resize:
        _resize_tabs(named, prefix)
    else:
        with gr.Row():
            named.add("width", _slider("Width", 64, 2048, 8, 512))
            named.add("height", _slider("Height", 64, 2048, 8, 512))
    with gr.Row():
        named.add("batch_count", _slider("Batch count", 1, 100, 1, 1))
        named.add("batch_size", _slider("Batch size", 1, 8, 1, 1))
        add_tiling(named, prefix)
    named.add("cfg", _slider("CFG Scale", 1, 30, 0.5, 7))
    named.add("distilled_cfg", gr.Slider(  # FLUX's guidance: shown for such checkpoints
        label="Distilled CFG Scale", minimum=0, maximum=30, step=0.1, value=3.5, visible=False,
        elem_id=f"{prefix}_distilled_cfg"))  # fmt: skip
    named.add("shift", gr.Slider(  # the flow-matching shift: shown for such checkpoints
        label="Shift", minimum=0, maximum=30, step=0.05, value=0, visible=False,
        info=SHIFT_INFO, elem_id=f"{prefix}_shift"))  # fmt: skip
    add_slg_controls(named, prefix)  # SD 3.5's Skip Layer Guidance: shown for such checkpoints
    if spec.resize:
        named.add("denoising", gr.Slider(
            label="Denoising strength", minimum=0, maximum=1, step=0.01, value=spec.denoising,
            elem_id=f"{prefix}_denoising"))  # fmt: skip
    build_seed_controls(named, prefix)
    named.add("clip_skip", _slider("Clip skip", 1, 12, 1, 1))
    add_module_control(named, prefix)  # Forge's "VAE / Text Encoder" (the option's value)
    add_sampler_parameters(named, prefix)  # eta, sigma churn..., NGMS (empty: Settings)
    add_speed_controls(named, prefix)  # token merging, DeepCache (empty: Settings > Speed)


def _slider(label: str, low: float, high: float, step: float, value: float) -> gr.Slider:
    return gr.Slider(label=label, minimum=low, maximum=high, step=step, value=value)


def _resize_tabs(named: Named, prefix: str) -> None:
    size_tab = named.add("size_tab", gr.State(0))
    with gr.Tabs():
        with gr.Tab("Resize to", id=f"{prefix}_resize_to") as to_tab:
            with gr.Row():
                named.add("width", _slider("Width", 64, 2048, 8, 512))
                named.add("height", _slider("Height", 64, 2048, 8, 512))
        with gr.Tab("Resize by", id=f"{prefix}_resize_by") as by_tab:
            named.add("scale_by", _slider("Scale", 0.05, 4.0, 0.05, 1.0))
    to_tab.select(lambda: 0, outputs=size_tab, show_progress="hidden")
    by_tab.select(lambda: 1, outputs=size_tab, show_progress="hidden")


def common_fields(v: dict[str, Any], image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Params fields every generation tab has, from the shared controls' values; with
    "Resize by" chosen, the size is `image_size` times the scale."""
    resize = "size_tab" in v
    if resize and v["size_tab"] == 1:
        width, height = _scaled(v, image_size)
    else:
        width, height = whole(v["width"], "Width"), whole(v["height"], "Height")
    fields = dict(
        checkpoint=v["checkpoint"] or None,
        prompt=v["prompt"] or "",
        negative_prompt=v["negative"] or "",
        sampler_name=v["sampler"],
        scheduler=v["schedule"],
        steps=whole(v["steps"], "Sampling steps"),
        cfg_scale=float(v["cfg"]),
        distilled_cfg_scale=float(v.get("distilled_cfg", 3.5)),  # FLUX (Forge's slider)
        shift=shift_value(v.get("shift")),  # SD 3.5, FLUX.1, Z-Image (0: the model's)
        **slg_fields(v),  # SD 3.5's Skip Layer Guidance
        width=width,
        height=height,
        **seed_fields(v),
        batch_count=whole(v["batch_count"], "Batch count"),
        batch_size=whole(v["batch_size"], "Batch size"),
        clip_skip=whole(v["clip_skip"], "Clip skip"),
        styles=tuple(v["styles"] or ()),
        vae=v["vae"] or None,
        **sampling_fields(v),  # tiling, eta, s_churn, ..., s_min_uncond
    )
    if resize:
        fields.update(
            resize_mode=int(v["resize_mode"] or 0), denoising_strength=float(v["denoising"])
        )
    return fields


def _scaled(v: dict[str, Any], image_size) -> tuple[int, int]:
    if image_size is None:
        raise InputError(
            "Resize by: upload an image first (the size is the image's times the scale)"
        )
    try:
        return size_for_scale(image_size, float(v["scale_by"]))
    except ParamError as exc:
        raise InputError(str(exc)) from None
