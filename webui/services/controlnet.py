"""ControlNet's request side: its always-on args, its model list, its unit checks.

Asked for as sd-webui-controlnet is: `alwayson_scripts: {"controlnet": {"args": [unit,
...]}}` (the name in any case: clients send "ControlNet"); the UI sends the same shape
with PIL images. `split_controlnet` takes it out of a request's always-on scripts,
`controlnet_fields` turns it into the params field `controlnet`: each unit read by
`core.controlnet_units.unit_from_dict`, its images decoded (base64, or a `{"image",
"mask"}` dict), its model resolved in `models/ControlNet` (an IP-Adapter unit: also its
CLIP vision encoder in `models/clip_vision`, and the preprocessor and model of one kind;
the T2I style adapter likewise, with `t2ia_style_clipvision` and CLIP ViT-L/14;
a ControlNet Union unit: a mode the model has, `core/controlnet_union.py`).
A bad unit is a `RequestError` at ("alwayson_scripts", name, "args", index, field); so is
an annotator preprocessor whose weights are missing from `models/ControlNet/annotators`
when no download may be tried (HF_HUB_OFFLINE): otherwise the job downloads them.

This module must never import torch, diffusers, gradio or fastapi.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..core.controlnet_union import mode_index, serves, unit_mode
from ..core.controlnet_units import NO_MODEL, ControlUnit, UnitError, unit_from_dict
from ..errors import UserError
from ..imaging.codec import ImageInputError, decode_base64_image
from ..imaging.control_preprocessors import (
    IP_ADAPTER_AUTO,
    ip_adapter_module,
    model_matches,
    preprocessor_named,
)
from ..model_manager.annotator_files import annotator_folder, missing_files, offline, where_from
from ..model_manager.controlnet_files import (
    ControlNetFile,
    find_clip_vision,
    find_controlnet,
    fits,
    ip_adapter_clip,
    list_controlnets,
)
from ..model_manager.sniff import HeaderError, gguf_family, sniff_file
from .errors import RequestError

CONTROLNET = "controlnet"
API_VERSION = 2  # what GET /controlnet/version answers (the extension's API version)
# the models fed by a CLIP preprocessor: (what a wrong preprocessor is told, what they are)
_CLIP_MODELS = {
    "ip-adapter": ("is an IP-Adapter: choose an ip-adapter_clip_* preprocessor",
                   "an IP-Adapter model"),
    "t2i-style": ("is the T2I style adapter: choose the t2ia_style_clipvision preprocessor",
                  "the T2I style adapter (t2iadapter_style_sd14v1)"),
}  # fmt: skip


def split_controlnet(alwayson: Mapping[str, Any]) -> tuple[tuple[str, Any] | None, dict]:
    """((the name as sent, its args) or None, the other always-on scripts)."""
    found, rest = None, {}
    for name, value in (alwayson or {}).items():
        if str(name).lower() == CONTROLNET:
            found = (str(name), value.get("args") if isinstance(value, Mapping) else value)
        else:
            rest[name] = value
    return found, rest


def _image(value: Any, loc: tuple) -> Image.Image | None:
    if value is None or value == "" or isinstance(value, Image.Image):
        return value or None
    try:
        return decode_base64_image(value, str(loc[-1]))
    except ImageInputError as exc:
        raise RequestError(loc, exc.message) from None


def _decoded(unit: Mapping[str, Any], loc: tuple) -> dict[str, Any]:
    """The unit's dict with its images decoded (`{"image": ..., "mask": ...}` too)."""
    values = dict(unit)
    for key in ("image", "input_image", "mask", "mask_image", "effective_region_mask"):
        value = values.get(key)
        if isinstance(value, Mapping) and key in ("image", "input_image"):
            values[key] = _image(value.get("image"), (*loc, key, "image"))
            if value.get("mask") is not None:
                values["mask"] = _image(value["mask"], (*loc, key, "mask"))
        elif key in values:
            values[key] = _image(value, (*loc, key))
    return values


def resolve_model(unit: ControlUnit, folder: Path, loc: tuple,
                  clip_folder: Path | None = None) -> ControlUnit:  # fmt: skip
    """The unit with its model's file and label (IP-Adapter: and its CLIP vision file);
    RequestError when one is not there or the preprocessor and model do not go together."""
    if unit.model in (NO_MODEL, "", None):
        return replace(unit, model=NO_MODEL, model_path=None, model_label=NO_MODEL)
    models = list_controlnets(folder)
    found = find_controlnet(models, unit.model)
    if found is None:
        known = ", ".join(models) or f"none: put ControlNet models into {folder}"
        raise RequestError((*loc, "model"), f"model not found: {unit.model} (available: {known})")
    unit = replace(unit, model_path=str(found.path), model_label=found.label)
    if found.union_modes:  # a ControlNet Union: the unit must say one of its modes
        tags = preprocessor_named(unit.module).tags
        try:
            mode_index(unit_mode(unit.union_control_type, tags), found.union_modes, loc[-1],
                       found.label, unit.module)  # fmt: skip
        except ValueError as exc:
            raise RequestError((*loc, "union_control_type"), str(exc)) from None
    module = preprocessor_named(unit.module)
    if module.name == IP_ADAPTER_AUTO and found.kind == "ip-adapter":
        unit = replace(unit, module=ip_adapter_module(ip_adapter_clip(found), found.family))
        module = preprocessor_named(unit.module)
    clip = module.clip
    if found.kind in _CLIP_MODELS and module.clip_model != found.kind:
        raise RequestError((*loc, "module"), f"{found.label} {_CLIP_MODELS[found.kind][0]}")
    if clip and found.kind != module.clip_model:
        raise RequestError((*loc, "model"), f"{unit.module} needs "
                           f"{_CLIP_MODELS[module.clip_model][1]}, not {found.label}")  # fmt: skip
    transformer = found.kind in ("flux-controlnet", "sd3-controlnet")  # no UNet levels
    if unit.effective_region_mask is not None and (
        transformer or found.kind == "t2i-style" or module.clip == "clip_l"
    ):
        raise RequestError((*loc, "effective_region_mask"), f"{found.label} has no region "
                           "mask (neither in sd-webui-controlnet nor in Forge)")  # fmt: skip
    if transformer and unit.control_mode == "My prompt is more important":
        raise RequestError((*loc, "control_mode"), f"{found.label} is a {found.family} "
                           "ControlNet: choose Balanced or ControlNet is more important")  # fmt: skip
    if clip and unit.weight > 0:
        clip_folder = clip_folder or folder.parent / "clip_vision"
        try:
            path = find_clip_vision(clip_folder, clip, unit.module)
        except UserError as exc:
            raise RequestError((*loc, "module"), str(exc)) from None
        unit = replace(unit, clip_vision_path=str(path))
    return unit


def controlnet_fields(found: tuple[str, Any], folder: Path,
                      clip_folder: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """The params field `controlnet` of the args `found` (name as sent, args); IP-Adapter
    units find their CLIP vision encoder in `clip_folder` (models/clip_vision)."""
    name, args = found
    loc = ("alwayson_scripts", name, "args")
    if isinstance(args, Mapping):
        args = [args]
    if not isinstance(args, list | tuple):
        raise RequestError(loc, "ControlNet needs its args: a list of units")
    units = []
    for index, item in enumerate(args):
        if not isinstance(item, Mapping):
            raise RequestError((*loc, index), "a ControlNet unit must be an object")
        try:
            unit = unit_from_dict(_decoded(item, (*loc, index)), index)
        except UnitError as exc:
            raise RequestError((*loc, *exc.loc), exc.message) from None
        if unit.active:
            unit = resolve_model(unit, folder, (*loc, index), clip_folder)
            check_annotator(unit.module, folder, (*loc, index, "module"))
        units.append(unit)
    return {"controlnet": tuple(units)}


def check_annotator(module: str, folder: Path, loc: tuple) -> None:
    """RequestError naming the file and the folder when the module's annotator weights
    are missing and cannot be downloaded (offline); the job downloads them otherwise."""
    annotators = annotator_folder(folder)
    missing = missing_files(annotators, module)
    if missing and offline():
        raise RequestError(loc, f"{module}: annotator weights {missing[0]} not found in "
                           f"{annotators} and downloads are off (HF_HUB_OFFLINE): put "
                           f"{', '.join(where_from(name) for name in missing)} there")  # fmt: skip


def checkpoint_family(models: Any, title: str | None) -> str:
    """The family label ("SD 1.x", "SDXL", ...) of a checkpoint, read from its header;
    "" when unknown (then no model is filtered out)."""
    if models is None:  # no model manager (a page built without one)
        return ""
    try:
        path = Path(models.resolve(title or None).path)
        if path.suffix.lower() == ".gguf":  # city96's FLUX files
            return gguf_family(path)
        return sniff_file(path).family if path.is_file() else ""
    except (LookupError, OSError, HeaderError):
        return ""


def listed_under(model: ControlNetFile, control_type: str, family: str = "") -> bool:
    """Whether a model is listed under a control type: its words in the name, as the
    extension filters ("t2ia", "ip_adapter", ...), or a ControlNet Union that has the
    type's mode; and it fits the checkpoint family."""
    of_type = model_matches(control_type, model.name) or (
        model.union_modes > 0 and serves(control_type, model.union_modes)
    )
    return of_type and fits(model, family)


def model_choices(folder: Path, control_type: str = "All", family: str = "") -> list[str]:
    """ "None" and the labels of the models of a control type that fit the checkpoint
    family, as the extension's model dropdown lists them (`listed_under`)."""
    models = list_controlnets(folder).values()
    return [NO_MODEL, *(m.label for m in models if listed_under(m, control_type, family))]
