"""Parameter copy: an infotext fills every control of a generation tab (A1111 paste fields).

The tabs know nothing of this. `connect_parameter_copy(demo, ctx)` runs once every tab
exists: it finds each generation tab's controls by their A1111 labels, then wires
- the "read parameters" button (`<tab>_paste`, ↙️): the infotext pasted into the prompt
  box fills the tab (an empty box: the infotext of the user's last image), and
- every "Send to <tab>" button made by `send_to_buttons(prefix, source)` (PNG Info,
  extension tabs): the infotext in `source` fills the target tab (and an image in
  `<prefix>_image_source` goes into its image input), then the tab opens.
The checkpoint is found by hash, else by name. Values a control cannot take (a sampler
that is not in the list, a number out of range) are clamped or left, with a warning.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.samplers import SAMPLERS, SCHEDULE_TYPES
from ..imaging.infotext import parse_infotext
from . import controlnet_ui as cn_ui
from . import slg_controls as slg_ui
from . import soft_inpainting_ui as soft_ui
from .adetailer_ui import ENABLE as ADETAILER_ENABLE
from .adetailer_ui import MODEL_KEYS as ADETAILER_MODELS
from .adetailer_ui import PASTE_FIELDS as ADETAILER_FIELDS
from .common import InputError, owner_of
from .module_controls import LABEL as MODULES_LABEL
from .module_controls import module_fill
from .refiner_controls import ENABLE as REFINER_ENABLE
from .refiner_controls import refiner_fill, with_checkpoint_titles
from .sampler_controls import PASTE_FIELDS, RESTORE_FACES, TILING
from .speed_controls import speed_fill

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

TARGETS = ("txt2img", "img2img", "inpaint")
LABELS = {"txt2img": "Send to txt2img", "img2img": "Send to img2img", "inpaint": "Send to inpaint"}
_SEND_ID = re.compile(r"^(.+)_send_params_(txt2img|img2img|inpaint)$")
_IMAGE_INPUTS = {"img2img": "img2img_image", "inpaint": "inpaint_editor"}

# infotext field -> control label; fields of one tab only are marked with its id
FIELDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Prompt", "Prompt", TARGETS),
    ("Negative prompt", "Negative prompt", TARGETS),
    ("Steps", "Sampling steps", TARGETS),
    ("Sampler", "Sampling method", TARGETS),
    ("Schedule type", "Schedule type", TARGETS),
    ("CFG scale", "CFG Scale", TARGETS),
    ("Seed", "Seed", TARGETS),
    ("Variation seed", "Variation seed", TARGETS),
    ("Variation seed strength", "Variation strength", TARGETS),
    ("Seed resize from-1", "Resize seed from width", TARGETS),
    ("Seed resize from-2", "Resize seed from height", TARGETS),
    ("Size-1", "Width", TARGETS),
    ("Size-2", "Height", TARGETS),
    ("Batch size", "Batch size", TARGETS),
    ("Clip skip", "Clip skip", TARGETS),
    ("VAE", "SD VAE", TARGETS),
    ("Denoising strength", "Denoising strength", TARGETS),
    ("Mask blur", "Mask blur", ("inpaint",)),
    ("Masked area padding", "Only masked padding, pixels", ("inpaint",)),
    ("Hires upscale", "Upscale by", ("txt2img",)),
    ("Hires steps", "Hires steps", ("txt2img",)),
    ("Hires upscaler", "Upscaler", ("txt2img",)),
    ("Hires resize-1", "Resize width to", ("txt2img",)),
    ("Hires resize-2", "Resize height to", ("txt2img",)),
    ("Hires sampler", "Hires sampling method", ("txt2img",)),
    ("Hires schedule type", "Hires schedule type", ("txt2img",)),
    ("Hires prompt", "Hires prompt", ("txt2img",)),
    ("Hires negative prompt", "Hires negative prompt", ("txt2img",)),
    *((key, label, TARGETS) for key, label in PASTE_FIELDS.items()),  # Eta, Sigma..., NGMS
    *ADETAILER_FIELDS,  # both ADetailer units' fields (" 2nd" after the second's)
    *((key, label, ("inpaint",)) for key, label in soft_ui.PASTE_FIELDS.items()),
    ("Refiner", "Checkpoint", ("txt2img", "img2img")),  # refiner_controls.py
    ("Refiner switch at", "Switch at", ("txt2img", "img2img")),
    ("Hires checkpoint", "Hires checkpoint", ("txt2img",)),
    ("Distilled CFG Scale", "Distilled CFG Scale", TARGETS),  # FLUX (Forge's field)
    ("Shift", "Shift", TARGETS),  # the flow-matching shift (SD 3.5, FLUX.1, Z-Image)
    *((key, label, TARGETS) for key, label in slg_ui.PASTE_ROWS),  # SD 3.5's SLG
)
HIRES_ENABLE = "Enable hires. fix"
_HIRES_KEYS = ("Hires upscale", "Hires upscaler", "Hires resize-1")
SEED_EXTRA = "Extra"  # A1111's checkbox that shows the variation seed rows
_SEED_EXTRA_KEYS = ("Variation seed", "Variation seed strength", "Seed resize from-1")
_SKIP = object()  # a value the control cannot take


def send_to_buttons(prefix: str, source, targets=TARGETS) -> dict[str, Any]:
    """Buttons "Send to <tab>" for an infotext `source`; `connect_parameter_copy` wires
    them (found by elem_id `<prefix>_send_params_<tab>`; `source` gets the elem_id
    `<prefix>_infotext_source` unless it has one)."""
    if getattr(source, "elem_id", None) is None:
        source.elem_id = f"{prefix}_infotext_source"
    with gr.Row(elem_id=f"{prefix}_send_params_row"):
        return {
            t: gr.Button(LABELS[t], size="sm", elem_id=f"{prefix}_send_params_{t}") for t in targets
        }


def _walk(block) -> Iterator[Any]:
    for child in getattr(block, "children", None) or []:
        yield child
        yield from _walk(child)


def tab_controls(tab) -> dict[str, Any]:
    """label -> the first input component with that label in the tab."""
    found: dict[str, Any] = {}
    for block in _walk(tab):
        label = getattr(block, "label", None)
        if isinstance(label, str) and label not in found and not isinstance(block, gr.Button):
            if isinstance(block, gr.components.Component) and not isinstance(block, gr.Gallery):
                found[label] = block
    return found


def checkpoint_title(ctx: AppContext, fields: dict) -> str | None:
    """The checkpoint an infotext names: by its hash, else by its name (hashing on need)."""
    models = ctx.models
    model_hash, name = fields.get("Model hash"), fields.get("Model")
    for key in (model_hash, name):
        if isinstance(key, str) and key:
            try:
                return models.resolve(key).title
            except LookupError:
                pass
    if isinstance(model_hash, str) and model_hash:
        registry = models.registry
        for info in registry.list():
            if info.sha256 is None and not info.is_folder:
                registry.ensure_hash(info)
                if info.shorthash == model_hash.lower():
                    return info.title
    return None


def _sampler(text: Any) -> tuple[str | None, str | None]:
    """(sampler label, schedule from an old combined name like "DPM++ 2M Karras")."""
    text = str(text or "").strip()
    if text in SAMPLERS:
        return text, None
    for schedule in SCHEDULE_TYPES:
        if text.lower().endswith(" " + schedule.lower()):
            base = text[: -len(schedule) - 1].strip()
            match = next((s for s in SAMPLERS if s.lower() == base.lower()), None)
            if match:
                return match, schedule
    match = next((s for s in SAMPLERS if s.lower() == text.lower()), None)
    return match, None


def _choices(component) -> list[Any]:
    return [
        c[1] if isinstance(c, list | tuple) else c
        for c in getattr(component, "choices", None) or []
    ]


def _value_for(component, value: Any, notes: list[str], label: str) -> Any:
    """`value` as the component takes it, or _SKIP with a note."""
    if isinstance(component, gr.Dropdown | gr.Radio):
        choices = _choices(component)
        text = str(value)
        if text in choices:
            return text
        stem = next(
            (c for c in choices if isinstance(c, str) and c.rsplit(".", 1)[0] == text), None
        )
        if stem is not None:
            return stem
        notes.append(f"{label}: {text} is not available")
        return _SKIP
    if isinstance(component, gr.Slider | gr.Number):
        try:
            number = float(value)
        except (TypeError, ValueError):
            notes.append(f"{label}: {value!r} is not a number")
            return _SKIP
        low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
        if low is not None and number < low:
            number = low
        if high is not None and number > high:
            number = high
        step = getattr(component, "step", 1)
        return (
            int(number)
            if float(number).is_integer() and (step is None or float(step).is_integer())
            else number
        )
    if isinstance(component, gr.Checkbox):  # infotext values are text: "False" is off
        return value.strip().lower() == "true" if isinstance(value, str) else bool(value)
    return str(value)


def fill(fields: dict, controls: dict[str, Any], tab: str, notes: list[str]) -> dict[Any, Any]:
    """component -> new value for every field the infotext has."""
    out: dict[Any, Any] = {}
    fields = dict(fields)
    sampler, schedule = _sampler(fields.get("Sampler"))
    if "Sampler" in fields:
        if sampler is None:
            notes.append(f"Sampling method: {fields['Sampler']} is not available")
            fields.pop("Sampler")
        else:
            fields["Sampler"] = sampler
            if schedule and fields.get("Schedule type", "Automatic") == "Automatic":
                fields["Schedule type"] = schedule
    for key, label, tabs in FIELDS:
        component = controls.get(label)
        if tab in tabs and component is not None and key in fields:
            value = _value_for(component, fields[key], notes, label)
            if value is not _SKIP:
                out[component] = value
    enable = controls.get(HIRES_ENABLE)
    if tab == "txt2img" and enable is not None:
        out[enable] = any(k in fields for k in _HIRES_KEYS)
    extra = controls.get(SEED_EXTRA)
    if extra is not None:  # A1111: ticked when the infotext has a variation or resize seed
        out[extra] = any(k in fields for k in _SEED_EXTRA_KEYS)
    ad_enable = controls.get(ADETAILER_ENABLE)
    if ad_enable is not None:  # ADetailer: on when the infotext names a detector
        out[ad_enable] = any(k in fields for k in ADETAILER_MODELS)
    soft = controls.get(soft_ui.ENABLED_LABEL)
    if tab == "inpaint" and soft is not None:  # A1111 writes it only when it was on
        out[soft] = soft_ui.paste_enabled(fields)
    tiling = controls.get(TILING)
    if tiling is not None:  # A1111 writes "Tiling: True" only when it was on
        out[tiling] = str(fields.get(TILING, "")).lower() == "true"
    faces = controls.get(RESTORE_FACES)
    if faces is not None:  # "Face restoration: CodeFormer" only when it was on
        out[faces] = bool(fields.get("Face restoration"))
    out.update(refiner_fill(fields, controls))
    out.update(cn_ui.paste_fill(fields, controls))  # "ControlNet N" fields: the units
    out.update(speed_fill(fields, controls))  # token merging, DeepCache
    shift = controls.get("Shift")
    if shift is not None and "Shift" not in fields:  # no shift: the model's own (0)
        out[shift] = 0
    out.update(slg_ui.paste_fill(fields, controls))  # no Skip layer guidance: off
    given = {PASTE_FIELDS[key] for key in PASTE_FIELDS if key in fields}
    for label in set(PASTE_FIELDS.values()) - given:
        if label in controls:  # not in the infotext: the option's value made the image
            out[controls[label]] = None
    return out


def connect_parameter_copy(demo, ctx: AppContext) -> None:
    """Wire the read-parameters and send-to buttons of the built UI (see module doc)."""
    blocks = list(demo.blocks.values())
    tabs = next((b for b in blocks if isinstance(b, gr.Tabs) and b.elem_id == "tabs"), None)
    checkpoint = next((b for b in blocks if getattr(b, "elem_id", None) == "sd_checkpoint"), None)
    by_id = {b.elem_id: b for b in blocks if getattr(b, "elem_id", None)}
    targets = {b.id: b for b in blocks if isinstance(b, gr.Tab) and b.id in TARGETS}
    for tab_id, tab in targets.items():
        controls = {**tab_controls(tab), **cn_ui.paste_controls(tab)}
        button, prompt = by_id.get(f"{tab_id}_paste"), controls.get("Prompt")
        if button is not None and prompt is not None:
            outputs = parameter_outputs(controls, checkpoint)
            button.click(_reader(ctx, tab_id, controls, outputs), inputs=prompt, outputs=outputs,
                         show_progress="hidden")  # fmt: skip
    for elem_id, button in by_id.items():
        m = _SEND_ID.match(elem_id)
        if not m or m.group(2) not in targets or not isinstance(button, gr.Button):
            continue
        prefix, tab_id = m.groups()
        source = by_id.get(f"{prefix}_infotext_source")
        if source is None:
            log.warning("%s has no %s_infotext_source; not wired", elem_id, prefix)
            continue
        controls = {**tab_controls(targets[tab_id]), **cn_ui.paste_controls(targets[tab_id])}
        outputs = parameter_outputs(controls, checkpoint)
        inputs = [source]
        image_in, image_out = (
            by_id.get(f"{prefix}_image_source"),
            by_id.get(_IMAGE_INPUTS.get(tab_id, "")),
        )
        if image_in is not None and image_out is not None:
            inputs.append(image_in)
            outputs = [*outputs, image_out]
        if tabs is not None:
            outputs = [*outputs, tabs]
        send = partial(_send, ctx, tab_id, controls, outputs, image_out, tabs)
        button.click(lambda *values, send=send: send(*values), inputs=inputs, outputs=outputs,
                     show_progress="hidden")  # fmt: skip


def parameter_outputs(controls: dict[str, Any], checkpoint=None) -> list[Any]:
    """The components of a tab that an infotext can fill (and the checkpoint picker)."""
    labels = {label for _, label, _ in FIELDS} | {HIRES_ENABLE, SEED_EXTRA, TILING,
                                                  ADETAILER_ENABLE, RESTORE_FACES,
                                                  REFINER_ENABLE, MODULES_LABEL}  # fmt: skip
    found = [c for label, c in controls.items()
             if label in labels or label.startswith("ControlNet ")]  # fmt: skip
    return [*found, checkpoint] if checkpoint is not None else found


def parameter_updates(ctx, tab_id, controls, outputs, text: str) -> list[Any]:
    """One update per component of `outputs`: the infotext's value, or gr.skip()."""
    fields = with_checkpoint_titles(ctx, parse_infotext(text))  # Refiner, Hires checkpoint
    notes: list[str] = []
    values = fill(fields, controls, tab_id, notes)
    values.update(module_fill(ctx, fields, controls))  # Forge's "Module N" fields
    picker = any(getattr(c, "elem_id", None) == "sd_checkpoint" for c in outputs)
    named = picker and ("Model" in fields or "Model hash" in fields)
    title = checkpoint_title(ctx, fields) if named else None
    if named and title is None:
        notes.append(
            f"Checkpoint not found: {fields.get('Model', '')} [{fields.get('Model hash', '')}]"
        )
    updates = []
    for component in outputs:
        if component in values:
            updates.append(values[component])
        elif getattr(component, "elem_id", None) == "sd_checkpoint" and title:
            titles = [i.title for i in ctx.models.checkpoints()]  # hashing may rename titles
            updates.append(gr.Dropdown(choices=titles, value=title))
        else:
            updates.append(gr.skip())
    for note in notes:
        gr.Warning(note)
    return updates


def _reader(ctx, tab_id, controls, outputs):
    def read_parameters(text: str, request: gr.Request):
        if not (text or "").strip():
            text = _last_infotext(ctx, owner_of(request))
            if not text:
                raise InputError("Paste an infotext into the prompt box first")
        return parameter_updates(ctx, tab_id, controls, outputs, text)

    return read_parameters


def _last_infotext(ctx, owner: str) -> str:
    for job in ctx.jobs.owner_jobs(owner, limit=20):
        if job.images:
            return job.images[0].infotext
    return ""


def _send(ctx, tab_id, controls, outputs, image_out, tabs, text, image=None):
    if not (text or "").strip():
        raise InputError("No parameters to send: drop an image with generation parameters first")
    updates = parameter_updates(
        ctx, tab_id, controls, [o for o in outputs if o is not image_out and o is not tabs], text
    )
    if image_out is not None and image is not None:
        picture = _open(image)
        editor = tab_id == "inpaint"
        updates.append(
            {"background": picture, "layers": [], "composite": picture} if editor else picture
        )
    elif image_out is not None:
        updates.append(gr.skip())
    if tabs is not None:
        updates.append(gr.Tabs(selected=tab_id))
    return updates


def _open(image):
    """A PIL image from a file path (the PNG Info input) or an image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    with Image.open(image) as opened:
        opened.load()
        return opened.convert("RGB") if opened.mode not in ("RGB", "RGBA") else opened.copy()
