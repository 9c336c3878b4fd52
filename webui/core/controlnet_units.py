"""ControlNet units: what a job asks of each one, checked, and how its infotext reads.

A unit is sd-webui-controlnet's `ControlNetUnit`: enabled, image (and mask), module (the
preprocessor), model, weight, guidance start/end, control mode, resize mode, processor
resolution, thresholds, pixel perfect. `unit_from_dict` reads one the way the extension
does (its field names, `input_image`/`mask_image` aliases, resize and control modes as
names or numbers); a bad field raises `UnitError` naming it. Negative processor_res or
thresholds mean the module's defaults (the extension's -1). The unit's model is resolved to
a file by the service (`model_path`, `model_label`: "name [hash]" as the extension lists
it). `infotext_fields` writes the extension's `ControlNet N: "Module: ..., ..."` fields;
`units_from_infotext` reads them back (PNG Info, "send to": without the images).

The work is in `core/controlnet.py` (run in the worker), the preprocessors in
`imaging/control_preprocessors.py`. `detect` hands the annotators with weights to the
`annotate` function its caller gives (the annotator cache, `model_manager/annotators.py`);
a preprocessor of sd-webui-controlnet this server does not build is refused by `checked`
with the reason (`control_annotators.REFUSED`).

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from PIL import Image

from ..imaging.control_preprocessors import (
    PREPROCESSORS,
    pixel_perfect_resolution,
    preprocessor_named,
    refused_reason,
)
from .controlnet_union import UNION_NAMES, UNKNOWN
from .errors import ParamError

# (module name, RGB image, processor resolution, threshold a, threshold b) -> map
Annotate = Callable[[str, np.ndarray, int, float, float], np.ndarray]

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
RESIZE_ALIASES = {"Inner Fit (Scale to Fit)": "Crop and Resize",
                  "Outer Fit (Shrink to Fit)": "Resize and Fill",
                  "Scale to Fit (Inner Fit)": "Crop and Resize",
                  "Envelope (Outer Fit)": "Resize and Fill"}  # fmt: skip
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
NO_MODEL = "None"
INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a",
                   "threshold_b", "guidance_start", "guidance_end", "pixel_perfect",
                   "control_mode")  # fmt: skip
_ALIASES = {"input_image": "image", "mask_image": "mask", "guidance": "guidance_end",
            "lowvram": "low_vram"}  # fmt: skip


# the extension's preprocessors this build refuses with a reason (not "unknown")
class UnitError(ValueError):
    """A bad unit field: `loc` is (unit index, field)."""

    def __init__(self, index: int, name: str, message: str):
        super().__init__(f"unit {index}: {name}: {message}")
        self.loc, self.message = (index, name), message


@dataclass(frozen=True)
class ControlUnit:
    enabled: bool = False  # the extension's default: clients send "enabled": true
    module: str = "none"
    model: str = NO_MODEL  # as listed ("name [hash]") or the bare name
    weight: float = 1.0
    image: Any = None  # PIL image (the API decodes base64); None in img2img: the init image
    mask: Any = None  # PIL "L" image, the image's mask (`_array`: inpaint, CLIP, scribble)
    effective_region_mask: Any = None  # PIL "L" image; white: where the unit acts
    resize_mode: str = "Crop and Resize"
    processor_res: int = -1  # -1: the module's default
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = "Balanced"
    pixel_perfect: bool = False
    low_vram: bool = False  # accepted as the extension's; this server keeps models as planned
    save_detected_map: bool = True  # the detected map joins the job's images
    model_path: str | None = None  # resolved by the service
    model_label: str = NO_MODEL  # "name [hash]" for the infotext
    clip_vision_path: str | None = None  # IP-Adapter units: the CLIP vision file (the service's)
    union_control_type: str = UNKNOWN  # ControlNet Union's mode (core/controlnet_union.py)

    @property
    def active(self) -> bool:
        return bool(self.enabled)

    @property
    def guides(self) -> bool:
        """Whether the unit steers sampling (a model, a weight above 0)."""
        return self.active and self.model_path is not None and self.weight > 0

    def serialize(self) -> str:
        """The extension's infotext value: `Module: canny, Model: ..., ...`."""
        values = {**{f: getattr(self, f) for f in INFOTEXT_FIELDS}, "model": self.model_label}
        return ", ".join(
            f"{' '.join(w.capitalize() for w in name.split('_'))}: {values[name]}"
            for name in INFOTEXT_FIELDS
        )


def _number(index: int, name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise UnitError(index, name, f"must be a number, got {value!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise UnitError(index, name, f"must be between {low} and {high}, got {value}")
    return float(value)


def _choice(index: int, name: str, value: Any, names: tuple[str, ...]) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    if isinstance(value, str):
        value = RESIZE_ALIASES.get(value, value)
        for choice in names:
            if value.lower() == choice.lower():
                return choice
    raise UnitError(index, name, f"must be one of {', '.join(names)} (or 0-{len(names) - 1}), "
                                 f"got {value!r}")  # fmt: skip


def _flag(index: int, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UnitError(index, name, f"must be true or false, got {value!r}")
    return value


def unit_from_dict(values: Mapping[str, Any], index: int = 0) -> ControlUnit:
    """A unit from the extension's dict (the API's, the UI's); images stay as given."""
    if not isinstance(values, Mapping):
        raise UnitError(index, "unit", "must be an object with the unit's fields")
    given = dict(values)
    for alias, name in _ALIASES.items():
        if alias in given:
            if name in given and given[name] is not None and given[alias] is not None:
                raise UnitError(index, alias, f"give {name} or {alias}, not both")
            value = given.pop(alias)
            if given.get(name) is None:
                given[name] = value
    known = {f.name for f in fields(ControlUnit)} - {"model_path", "model_label",
                                                     "clip_vision_path"}  # fmt: skip
    unit = checked(ControlUnit(**{k: v for k, v in given.items() if k in known}), index)
    if unit.mask is not None and unit.image is None and not preprocessor_named(unit.module).inpaint:
        raise UnitError(index, "mask", "is the mask of the unit's own image: give the unit "
                        "an image too (as the extension)")  # fmt: skip
    return unit


def checked(unit: ControlUnit, index: int = 0) -> ControlUnit:
    """The unit with its modes normalised and -1 values set to the module's defaults."""
    for name in ("enabled", "pixel_perfect", "low_vram", "save_detected_map"):
        _flag(index, name, getattr(unit, name))
    if (reason := refused_reason(unit.module)) is not None:
        raise UnitError(index, "module", f"not available on this server: {reason}")
    if not isinstance(unit.module, str) or preprocessor_named(unit.module) is None:
        known = ", ".join(PREPROCESSORS)
        raise UnitError(index, "module", f"unknown preprocessor {unit.module!r} (known: {known})")
    if not isinstance(unit.model, str):
        raise UnitError(index, "model", f"must be a model name, got {unit.model!r}")
    module = preprocessor_named(unit.module)
    changes: dict[str, Any] = {
        "module": module.name,
        "weight": _number(index, "weight", unit.weight, 0.0, 2.0),
        "resize_mode": _choice(index, "resize_mode", unit.resize_mode, RESIZE_MODES),
        "control_mode": _choice(index, "control_mode", unit.control_mode, CONTROL_MODES),
        "guidance_start": _number(index, "guidance_start", unit.guidance_start, 0.0, 1.0),
        "guidance_end": _number(index, "guidance_end", unit.guidance_end, 0.0, 1.0),
        "union_control_type": _choice(
            index, "union_control_type", unit.union_control_type, UNION_NAMES
        ),
    }
    if changes["guidance_start"] > changes["guidance_end"]:
        raise UnitError(index, "guidance_start",
                        f"must not be above guidance_end ({changes['guidance_end']})")  # fmt: skip
    for name, slider in (("processor_res", module.resolution), ("threshold_a", module.slider_1),
                         ("threshold_b", module.slider_2)):  # fmt: skip
        value = _number(index, name, getattr(unit, name), -math.inf, math.inf)
        if slider is None or not slider.minimum <= value <= slider.maximum:
            value = slider.value if slider is not None else getattr(ControlUnit, name)
        changes[name] = int(value) if name == "processor_res" else float(value)
    return replace(unit, **changes)


def check_units(units: tuple[ControlUnit, ...]) -> None:
    """Raise ParamError("controlnet") for a unit that is not a checked, resolved unit."""
    if isinstance(units, ControlUnit) or not isinstance(units, tuple | list):
        raise ParamError("controlnet", "must be a list of ControlNet units")
    for index, unit in enumerate(units):
        if not isinstance(unit, ControlUnit):
            raise ParamError("controlnet", f"unit {index} is not a ControlNet unit")
        try:
            checked(unit, index)
        except UnitError as exc:
            raise ParamError("controlnet", str(exc)) from None
        if unit.active and unit.model != NO_MODEL and unit.model_path is None:
            raise ParamError("controlnet", f"unit {index}: model {unit.model!r} is not resolved")


def infotext_fields(units: tuple[ControlUnit, ...]) -> dict[str, str]:
    """`ControlNet N` fields of the enabled units (N: the unit's place, as the extension)."""
    return {f"ControlNet {i}": unit.serialize() for i, unit in enumerate(units) if unit.active}


_FIELD = re.compile(r"^ControlNet (\d+)$")


def _parse_value(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def units_from_infotext(params: Mapping[str, str]) -> dict[int, dict[str, Any]]:
    """The units an infotext's `ControlNet N` fields describe, by N (images not included)."""
    units: dict[int, dict[str, Any]] = {}
    for key, text in params.items():
        match = _FIELD.match(str(key))
        if not match:
            continue
        values: dict[str, Any] = {"enabled": True}
        for item in str(text).split(","):
            name, sep, value = item.strip().partition(": ")
            if sep:
                values["_".join(w.lower() for w in name.split(" "))] = _parse_value(value)
        units[int(match[1])] = values
    return units


def _array(image: Image.Image, mask: Image.Image | None, inpaint: bool) -> np.ndarray:
    """The preprocessor's input, with the image's mask as the extension uses it: inpaint
    modules get it as a 4th channel (white: repaint); other map modules take a mask that is
    neither all black nor all white as their input instead of the image (the extension's
    "canvas scribble" mode); the CLIP modules' mask is applied by `core/ip_adapter.py`."""
    rgb = np.asarray(image.convert("RGB"))
    if not inpaint:
        if mask is None:
            return rgb
        alpha = np.asarray(mask.convert("L").resize(image.size, Image.Resampling.NEAREST))
        if (alpha <= 5).all() or (alpha >= 250).all():
            return rgb
        return np.repeat(alpha[:, :, None], 3, axis=2)
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    if mask is not None:
        alpha = np.asarray(mask.convert("L").resize(image.size, Image.Resampling.NEAREST))
        alpha = np.where(alpha > 127, 255, 0).astype(np.uint8)
    return np.concatenate([rgb, alpha[:, :, None]], axis=2)


def detect(unit: ControlUnit, image: Image.Image, mask: Image.Image | None, size: tuple[int, int],
           resize_mode: str, seed: int = 0,
           annotate: Annotate | None = None) -> np.ndarray:  # fmt: skip
    """The unit's detected map of `image` (before fitting it to the generation size);
    an annotator with weights runs through `annotate`."""
    module = preprocessor_named(unit.module)
    if module is None:
        raise UnitError(0, "module", f"unknown preprocessor {unit.module!r}")
    mask = mask if mask is not None else unit.mask
    # CLIP modules: their mask is applied to the CLIP input (core/ip_adapter.py)
    array = _array(image, None if module.clip else mask, module.inpaint)
    res = unit.processor_res
    if unit.pixel_perfect:
        res = pixel_perfect_resolution(array.shape, size[0], size[1], resize_mode)
    if module.annotator:
        if annotate is None:
            raise UnitError(0, "module", f"{module.name} runs an annotator network, which "
                            "is not available here")  # fmt: skip
        detected = annotate(module.name, array, res, unit.threshold_a, unit.threshold_b)
    else:
        detected = module(array, res, unit.threshold_a, unit.threshold_b, seed)
    return detected if detected.ndim == 3 else detected[:, :, None].repeat(3, axis=2)
