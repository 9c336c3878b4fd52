"""The "ADetailer" accordion of the txt2img and img2img tabs: two unit tabs, as the
extension shows them.

Each unit tab has ADetailer's controls with its labels (the 2nd tab's end in " 2nd", so
PNG Info and "send to" find them: `PASTE_FIELDS`). `detailer_request` turns the values
into the extension's API shape, `{"ADetailer": {"args": [enable, skip_img2img, {unit},
{unit}]}}`, which the generation service reads as it does for an API request. The
detector list is the files in `models/adetailer` (read again by the refresh button).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.params_detailer import ADETAILER, MERGE_INVERT, SAME_SCHEDULER, ordinal_suffix
from ..core.samplers import SAMPLERS, SCHEDULE_TYPES
from ..services.detailer import detector_names
from .icons import icon_button

if TYPE_CHECKING:
    from ..context import AppContext
    from .image_common import Named

UNITS = 2  # ADetailer's default "Max models"
ENABLE, SKIP = "Enable ADetailer", "Skip img2img"
# ad_* key -> (control label, infotext name after "ADetailer ")
_FIELDS: dict[str, tuple[str, str]] = {
    "ad_tap_enable": ("Enable this tab", "tap enable"),  # never in the infotext
    "ad_model": ("ADetailer model", "model"),
    "ad_prompt": ("ADetailer prompt", "prompt"),
    "ad_negative_prompt": ("ADetailer negative prompt", "negative prompt"),
    "ad_confidence": ("Detection model confidence threshold", "confidence"),
    "ad_mask_k_largest": ("Mask only the top k largest (0 to disable)", "mask only top k largest"),
    "ad_mask_min_ratio": ("Mask min area ratio", "mask min ratio"),
    "ad_mask_max_ratio": ("Mask max area ratio", "mask max ratio"),
    "ad_x_offset": ("Mask x(→) offset", "x offset"),
    "ad_y_offset": ("Mask y(↑) offset", "y offset"),
    "ad_dilate_erode": ("Mask erosion (-) / dilation (+)", "dilate erode"),
    "ad_mask_merge_invert": ("Mask merge mode", "mask merge invert"),
    "ad_mask_blur": ("Inpaint mask blur", "mask blur"),
    "ad_denoising_strength": ("Inpaint denoising strength", "denoising strength"),
    "ad_inpaint_only_masked": ("Inpaint only masked", "inpaint only masked"),
    "ad_inpaint_only_masked_padding": ("Inpaint only masked padding, pixels", "inpaint padding"),
    "ad_use_inpaint_width_height": ("Use separate width/height", "use inpaint width height"),
    "ad_inpaint_width": ("inpaint width", "inpaint width"),
    "ad_inpaint_height": ("inpaint height", "inpaint height"),
    "ad_use_steps": ("Use separate steps", "use separate steps"),
    "ad_steps": ("ADetailer steps", "steps"),
    "ad_use_cfg_scale": ("Use separate CFG scale", "use separate CFG scale"),
    "ad_cfg_scale": ("ADetailer CFG scale", "CFG scale"),
    "ad_use_sampler": ("Use separate sampler", "use separate sampler"),
    "ad_sampler": ("ADetailer sampler", "sampler"),
    "ad_scheduler": ("ADetailer scheduler", "scheduler"),
    "ad_use_noise_multiplier": ("Use separate noise multiplier", "use separate noise multiplier"),
    "ad_noise_multiplier": ("Noise multiplier for img2img", "noise multiplier"),
    "ad_use_clip_skip": ("Use separate CLIP skip", "use separate CLIP skip"),
    "ad_clip_skip": ("ADetailer CLIP skip", "CLIP skip"),
}
_INTS = ("ad_mask_k_largest", "ad_x_offset", "ad_y_offset", "ad_dilate_erode", "ad_mask_blur",
         "ad_inpaint_only_masked_padding", "ad_inpaint_width", "ad_inpaint_height",
         "ad_steps", "ad_clip_skip")  # fmt: skip
# (infotext field, control label, tabs): what parameter copy fills (webui.ui.paste)
PASTE_FIELDS: tuple[tuple[str, str, tuple[str, ...]], ...] = tuple(
    (f"ADetailer {name}{ordinal_suffix(n)}", f"{label}{ordinal_suffix(n)}",
     ("txt2img", "img2img", "inpaint"))
    for n in range(UNITS) for label, name in _FIELDS.values()
)  # fmt: skip
MODEL_KEYS = tuple(f"ADetailer model{ordinal_suffix(n)}" for n in range(UNITS))


def _name(key: str, n: int) -> str:
    return f"{key}_{n}"


def add_adetailer_controls(ctx: AppContext, named: Named, prefix: str, kind: str) -> None:
    """The accordion with the enable switch, "Skip img2img" (img2img) and the unit tabs."""
    folder = ctx.generation.detector_dir
    with gr.Accordion(ADETAILER, open=False, elem_id=f"{prefix}_adetailer"):
        with gr.Row():
            named.add("ad_enable", gr.Checkbox(label=ENABLE, value=False,
                                               elem_id=f"{prefix}_ad_enable"))  # fmt: skip
            if kind == "img2img":
                named.add("ad_skip_img2img", gr.Checkbox(label=SKIP, value=False))
        with gr.Tabs():
            for n in range(UNITS):
                with gr.Tab(ordinal_suffix(n).strip() or "1st"):
                    _unit_controls(named, prefix, n, folder)


def _unit_controls(named: Named, prefix: str, n: int, folder) -> None:
    s = ordinal_suffix(n)

    def label(key: str) -> str:
        return _FIELDS[key][0] + s

    def add(key: str, component) -> None:
        named.add(_name(key, n), component)

    def slider(key: str, low: float, high: float, step: float, value: float) -> None:
        add(key, gr.Slider(label=label(key), minimum=low, maximum=high, step=step, value=value))

    add("ad_tap_enable", gr.Checkbox(label=label("ad_tap_enable"), value=True))
    with gr.Row():
        model = gr.Dropdown(label=label("ad_model"), choices=["None", *detector_names(folder)],
                            value="None", elem_id=f"{prefix}_ad_model_{n}")  # fmt: skip
        add("ad_model", model)
        refresh = icon_button("refresh", elem_id=f"{prefix}_ad_refresh_{n}")
        refresh.click(lambda value: gr.Dropdown(choices=["None", *detector_names(folder)],
                                                value=value), inputs=model, outputs=model,
                      show_progress="hidden")  # fmt: skip
    add("ad_prompt", gr.Textbox(label=label("ad_prompt"), lines=2,
                                placeholder="If blank, the main prompt is used."))  # fmt: skip
    add("ad_negative_prompt", gr.Textbox(label=label("ad_negative_prompt"), lines=2,
                                         placeholder="If blank, the main negative prompt is used."))  # fmt: skip
    with gr.Accordion(f"Detection{s}", open=False):
        slider("ad_confidence", 0.0, 1.0, 0.01, 0.3)
        slider("ad_mask_k_largest", 0, 10, 1, 0)
        with gr.Row():
            slider("ad_mask_min_ratio", 0.0, 1.0, 0.001, 0.0)
            slider("ad_mask_max_ratio", 0.0, 1.0, 0.001, 1.0)
    with gr.Accordion(f"Mask Preprocessing{s}", open=False):
        with gr.Row():
            slider("ad_x_offset", -200, 200, 1, 0)
            slider("ad_y_offset", -200, 200, 1, 0)
        slider("ad_dilate_erode", -128, 128, 4, 4)
        add("ad_mask_merge_invert", gr.Radio(label=label("ad_mask_merge_invert"),
                                             choices=list(MERGE_INVERT), value="None"))  # fmt: skip
    with gr.Accordion(f"Inpainting{s}", open=False):
        with gr.Row():
            slider("ad_mask_blur", 0, 64, 1, 4)
            slider("ad_denoising_strength", 0.0, 1.0, 0.01, 0.4)
        with gr.Row():
            add("ad_inpaint_only_masked", gr.Checkbox(label=label("ad_inpaint_only_masked"),
                                                      value=True))  # fmt: skip
            slider("ad_inpaint_only_masked_padding", 0, 256, 4, 32)
        _switched(add, label, "ad_use_inpaint_width_height", [
            ("ad_inpaint_width", 64, 2048, 8, 512), ("ad_inpaint_height", 64, 2048, 8, 512)])  # fmt: skip
        _switched(add, label, "ad_use_steps", [("ad_steps", 1, 150, 1, 28)])
        _switched(add, label, "ad_use_cfg_scale", [("ad_cfg_scale", 0.0, 30.0, 0.5, 7.0)])
        with gr.Row():
            add("ad_use_sampler", gr.Checkbox(label=label("ad_use_sampler"), value=False))
            add("ad_sampler", gr.Dropdown(label=label("ad_sampler"), choices=SAMPLERS,
                                          value="DPM++ 2M" if "DPM++ 2M" in SAMPLERS else SAMPLERS[0]))  # fmt: skip
            add("ad_scheduler", gr.Dropdown(label=label("ad_scheduler"),
                                            choices=[SAME_SCHEDULER, *SCHEDULE_TYPES],
                                            value=SAME_SCHEDULER))  # fmt: skip
        _switched(add, label, "ad_use_noise_multiplier",
                  [("ad_noise_multiplier", 0.5, 1.5, 0.01, 1.0)])  # fmt: skip
        _switched(add, label, "ad_use_clip_skip", [("ad_clip_skip", 1, 12, 1, 1)])


def _switched(add, label, switch: str, sliders: list[tuple]) -> None:
    """A "Use separate ..." checkbox and the sliders it turns on."""
    with gr.Row():
        add(switch, gr.Checkbox(label=label(switch), value=False))
        for key, low, high, step, value in sliders:
            add(key, gr.Slider(label=label(key), minimum=low, maximum=high, step=step,
                               value=value))  # fmt: skip


def detailer_request(v: dict[str, Any]) -> dict[str, Any]:
    """{"ADetailer": {"args": [...]}} from the accordion's values, or {} when it is off."""
    from .image_common import whole  # image_common -> paste -> this module

    if "ad_enable" not in v or not v["ad_enable"]:
        return {}
    units = []
    for n in range(UNITS):
        unit: dict[str, Any] = {}
        for key, (text, _) in _FIELDS.items():
            value = v[_name(key, n)]
            if key in _INTS:
                value = whole(value, text + ordinal_suffix(n))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                value = float(value)
            unit[key] = value if value is not None else ""
        units.append(unit)
    args = [True, bool(v.get("ad_skip_img2img", False)), *units]
    return {ADETAILER: {"args": args}}
