"""The "ControlNet" accordion of txt2img, img2img and Inpaint: units as the extension shows them.

`control_net_unit_count` units (3 by default), each a tab "ControlNet Unit N" with:
enable, pixel perfect, the control image and an optional mask (img2img and Inpaint: the
tab's own image unless "Upload independent control image" is ticked), the control type
(filters the preprocessors and the models, and picks the type's defaults), preprocessor,
💥 (runs the preprocessor and shows its map here; the annotators with weights through
the context's annotator cache, missing weights a message naming file and folder), model
(with refresh; filtered by the checkpoint's family), weight, starting/ending control
step, the preprocessor resolution and thresholds the preprocessor has (labels, ranges and
defaults from it), control mode and resize mode. A ControlNet Union model is listed under
every control type it has a mode for, and the unit's control type picks its mode.
`controlnet_request` turns the values into the API's shape, `{"controlnet": {"args":
[unit, ...]}}` with PIL images, which the generation service reads as for an API request.
`paste_controls` / `paste_fill` let PNG Info and "send to" restore the units
from the `ControlNet N` infotext fields (not the images).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from PIL import Image

from ..core.controlnet_union import mode_of_type
from ..core.controlnet_units import (
    CONTROL_MODES,
    RESIZE_MODES,
    UnitError,
    checked,
    detect,
    unit_from_dict,
    units_from_infotext,
)
from ..errors import UserError
from ..imaging.control_preprocessors import (
    CONTROL_TYPES,
    PREPROCESSORS,
    modules_of_type,
    preprocessor_named,
)
from ..services.controlnet import CONTROLNET, checkpoint_family, model_choices
from .common import InputError
from .icons import icon_button

if TYPE_CHECKING:
    from ..context import AppContext
    from .image_common import Named

TITLE = "ControlNet"
OWN_IMAGE = "Upload independent control image"
_WORDS = {name: word for name, _, word in CONTROL_TYPES}  # "": every model ("All")
_DEFAULTS = {name: module for name, module, _ in CONTROL_TYPES}
# unit dict key -> the key of its control in `Named` (and in paste_controls)
FIELDS = ("enabled", "module", "model", "weight", "image", "mask", "resize_mode",
          "processor_res", "threshold_a", "threshold_b", "guidance_start", "guidance_end",
          "control_mode", "pixel_perfect", "effective_region_mask")  # fmt: skip
_IMAGES = ("image", "mask", "effective_region_mask")


def _key(field: str, n: int) -> str:
    return f"cn_{field}_{n}"


def _elem(prefix: str, field: str, n: int) -> str:
    return f"{prefix}_cn{n}_{field}"


def unit_count(ctx: AppContext) -> int:
    return max(1, min(10, int(ctx.options.get("control_net_unit_count"))))


def add_controlnet_controls(ctx: AppContext, named: Named, prefix: str, kind: str,
                            checkpoint: Any) -> None:  # fmt: skip
    """The accordion with one tab per unit (`kind`: txt2img or img2img)."""
    with gr.Accordion(TITLE, open=False, elem_id=f"{prefix}_controlnet"):
        with gr.Tabs():
            for n in range(unit_count(ctx)):
                with gr.Tab(f"ControlNet Unit {n}"):
                    _unit(ctx, named, prefix, kind, n, checkpoint)


def _slider_update(slider, value: float | None = None) -> dict:
    if slider is None:
        return gr.Slider(visible=False)
    return gr.Slider(label=slider.label, minimum=slider.minimum, maximum=slider.maximum,
                     step=slider.step, value=slider.value if value is None else value,
                     visible=True)  # fmt: skip


def module_sliders(module: str, values: tuple = (None, None, None)) -> list[dict]:
    """The resolution and threshold sliders as the preprocessor has them (at `values`,
    else its defaults)."""
    found = preprocessor_named(module) or PREPROCESSORS["none"]
    sliders = (found.resolution, found.slider_1, found.slider_2)
    return [_slider_update(s, v) for s, v in zip(sliders, values, strict=True)]


def _unit(ctx: AppContext, named: Named, prefix: str, kind: str, n: int, checkpoint) -> None:
    def add(field: str, component):
        component.elem_id = _elem(prefix, field, n)
        return named.add(_key(field, n), component)

    folder = ctx.generation.controlnet_dir
    with gr.Row():
        add("enabled", gr.Checkbox(label="Enable", value=False))
        add("pixel_perfect", gr.Checkbox(label="Pixel Perfect", value=False))
        if kind == "img2img":
            add("own_image", gr.Checkbox(label=OWN_IMAGE, value=False))
    with gr.Row():
        add("image", gr.Image(label="Image", type="pil", sources=["upload", "clipboard"],
                              height=256))  # fmt: skip
        add("mask", gr.Image(label="Mask (optional)", type="pil", image_mode="L",
                             sources=["upload", "clipboard"], height=256))  # fmt: skip
        preview = gr.Image(label="Preprocessor Preview", interactive=False, height=256,
                           elem_id=_elem(prefix, "preview", n))  # fmt: skip
        add("effective_region_mask", gr.Image(label="Effective Region Mask", type="pil",
                                              image_mode="L", sources=["upload", "clipboard"],
                                              height=256))  # fmt: skip
    control_type = add("control_type", gr.Radio(label="Control Type", value="All",
                                                choices=[t[0] for t in CONTROL_TYPES]))  # fmt: skip
    with gr.Row():
        module = add("module", gr.Dropdown(label="Preprocessor", choices=list(PREPROCESSORS),
                                           value="none"))  # fmt: skip
        run = gr.Button("💥", elem_id=_elem(prefix, "run_preprocessor", n), scale=0,
                        min_width=40)  # fmt: skip
        family = checkpoint_family(ctx.models, getattr(checkpoint, "value", None))
        model = add("model", gr.Dropdown(label="Model", value="None",
                                         choices=model_choices(folder, "All", family)))  # fmt: skip
        refresh = icon_button("refresh", elem_id=_elem(prefix, "refresh_models", n))
    with gr.Row():
        add("weight", gr.Slider(label="Control Weight", minimum=0.0, maximum=2.0, step=0.05,
                                value=1.0))  # fmt: skip
        add("guidance_start", gr.Slider(label="Starting Control Step", minimum=0.0,
                                        maximum=1.0, step=0.01, value=0.0))  # fmt: skip
        add("guidance_end", gr.Slider(label="Ending Control Step", minimum=0.0, maximum=1.0,
                                      step=0.01, value=1.0))  # fmt: skip
    with gr.Row():
        # hidden until a preprocessor has them; the starting values lie in every one's range
        # (an update of the range reaches the server before the page's new value)
        sliders = [add(field, gr.Slider(label=text, minimum=low, maximum=high, value=value,
                                        visible=False))
                   for field, text, low, high, value in (
                       ("processor_res", "Resolution", 64, 2048, 512),
                       ("threshold_a", "Threshold A", 0, 255, 1),
                       ("threshold_b", "Threshold B", 0, 255, 1))]  # fmt: skip
    add("control_mode", gr.Radio(label="Control Mode", choices=list(CONTROL_MODES),
                                 value=CONTROL_MODES[0]))  # fmt: skip
    add("resize_mode", gr.Radio(label="Resize Mode", choices=list(RESIZE_MODES),
                                value="Crop and Resize"))  # fmt: skip

    def models_for(kind_name: str, current: str, title: str | None):
        word = _WORDS.get(kind_name, "")
        choices = model_choices(folder, kind_name, checkpoint_family(ctx.models, title))
        if current not in choices or current == "None":  # the type's first model
            current = choices[1] if word and len(choices) > 1 else "None"
        return gr.Dropdown(choices=choices, value=current)

    def pick_type(kind_name: str, current: str, title: str | None):
        default = _DEFAULTS.get(kind_name, "none")
        return (gr.Dropdown(choices=modules_of_type(kind_name), value=default),
                models_for(kind_name, current, title), *module_sliders(default))  # fmt: skip

    control_type.input(pick_type, inputs=[control_type, model, checkpoint],
                       outputs=[module, model, *sliders], show_progress="hidden")  # fmt: skip
    module.input(module_sliders, inputs=module, outputs=sliders, show_progress="hidden")
    refresh.click(models_for, inputs=[control_type, model, checkpoint], outputs=model,
                  show_progress="hidden")  # fmt: skip
    # a new checkpoint: its family's models (FLUX or SD)
    checkpoint.input(models_for, inputs=[control_type, model, checkpoint], outputs=model,
                     show_progress="hidden")  # fmt: skip
    inputs = [module, named[_key("image", n)], named[_key("mask", n)], *sliders]
    annotators = getattr(ctx, "annotators", None)  # ControlNet's annotators with weights
    annotate = annotators.run if annotators is not None else None

    def show_map(module, image, mask, res, a, b) -> Image.Image:
        return _preview(module, image, mask, res, a, b, annotate=annotate)

    run.click(show_map, inputs=inputs, outputs=preview, show_progress="hidden")


def _preview(module: str, image: Image.Image | None, mask: Image.Image | None,
             res: float, a: float, b: float, annotate: Any = None) -> Image.Image:  # fmt: skip
    """💥: the preprocessor's map of the unit's image."""
    if image is None:
        raise InputError("ControlNet: put an image into the unit first")
    try:
        unit = checked(unit_from_dict({"enabled": True, "module": module, "processor_res": res,
                                       "threshold_a": a, "threshold_b": b}))  # fmt: skip
    except UnitError as exc:
        raise InputError(f"ControlNet: {exc}") from None
    try:
        detected = detect(unit, image, mask, (image.height, image.width), unit.resize_mode,
                          annotate=annotate)  # fmt: skip
    except UnitError as exc:
        raise InputError(f"ControlNet: {exc.message}") from None
    except UserError as exc:  # annotator weights missing (offline), or unfit
        raise InputError(f"ControlNet: {exc}") from None
    return Image.fromarray(np.ascontiguousarray(detected[:, :, :3]))


def controlnet_request(v: dict[str, Any]) -> dict[str, Any]:
    """{"controlnet": {"args": [unit, ...]}} from the accordion's values, {} with no unit on."""
    units = []
    n = 0
    while _key("enabled", n) in v:
        unit = {field: v.get(_key(field, n)) for field in FIELDS}
        # the extension's hidden "Union Control Type": the mode of the chosen control type
        unit["union_control_type"] = mode_of_type(str(v.get(_key("control_type", n), "All")))
        if _key("own_image", n) in v and not v[_key("own_image", n)]:
            unit["image"] = None  # img2img / Inpaint: the tab's image (and its mask)
            unit["mask"] = None
        units.append(unit)
        n += 1
    if not any(unit["enabled"] for unit in units):
        return {}
    return {CONTROLNET: {"args": units}}


def _walk(block) -> Iterator[Any]:
    for child in getattr(block, "children", None) or []:
        yield child
        yield from _walk(child)


def paste_controls(tab) -> dict[str, Any]:
    """ "ControlNet N field" -> the unit's control, for parameter copy."""
    found: dict[str, Any] = {}
    for block in _walk(tab):
        elem = getattr(block, "elem_id", None) or ""
        head, _, rest = elem.partition("_cn")
        number, _, field = rest.partition("_")
        if head and number.isdigit() and field in FIELDS and field not in _IMAGES:
            found[f"ControlNet {number} {field}"] = block
    return found


def paste_fill(fields: dict, controls: dict[str, Any]) -> dict[Any, Any]:
    """component -> value for the units an infotext names; the other units are turned off."""
    out: dict[Any, Any] = {}
    units = units_from_infotext(fields)
    for key in list(controls):
        if not key.startswith("ControlNet ") or not key.endswith(" enabled"):
            continue
        n = int(key.split(" ")[1])
        values = units.get(n, {"enabled": False})
        if "module" in values:  # the sliders as the module has them, at the pasted values
            given = tuple(values.get(f) for f in ("processor_res", "threshold_a", "threshold_b"))
            for field, update in zip(
                ("processor_res", "threshold_a", "threshold_b"),
                module_sliders(str(values["module"]), given),
                strict=True,
            ):
                if f"ControlNet {n} {field}" in controls:
                    out[controls[f"ControlNet {n} {field}"]] = update
            values = {k: v for k, v in values.items() if k not in ("processor_res", "threshold_a",
                                                                   "threshold_b")}  # fmt: skip
        for field, value in values.items():
            target = controls.get(f"ControlNet {n} {field}")
            if target is None:
                continue
            if field == "model" and isinstance(target, gr.Dropdown):
                choices = [c[0] if isinstance(c, tuple) else c for c in target.choices or []]
                out[target] = gr.Dropdown(choices=sorted({*choices, str(value)}), value=value)
            else:
                out[target] = value
    return out
