"""The detailer's params (ADetailer's units): their ad_* fields, checks and infotext.

A job's `adetailer` is a tuple of `DetailerUnit`s, one per ADetailer tab, each with
ADetailer's own field names and defaults. `units_from_args` reads the extension's API
shape (`alwayson_scripts: {"ADetailer": {"args": [enable, skip_img2img, {unit}, ...]}}`),
`infotext_fields` writes ADetailer's infotext (" 2nd", " 3rd"... after a later unit's
names) and `units_from_infotext` reads it back. What this server does not have (a
separate checkpoint or VAE, restore face, ControlNet, YOLO-World classes) is
refused when asked for, naming the field, never ignored.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

ADETAILER = "ADetailer"
ADETAILER_VERSION = "24.11.1"  # the ADetailer release whose behaviour and fields we follow
MERGE_INVERT = ("None", "Merge", "Merge and Invert")
SAME_SCHEDULER = "Use same scheduler"
MAX_UNITS = 10  # ADetailer's "Max models" setting goes to 10


class UnitError(ValueError):
    """A bad unit field: `loc` is (unit index in the args list, field name)."""

    def __init__(self, loc: tuple[Any, ...], message: str):
        super().__init__(f"{'.'.join(str(p) for p in loc)}: {message}")
        self.loc = loc
        self.message = message


@dataclass(frozen=True)
class DetailerUnit:
    """One ADetailer tab (ADetailer's ADetailerArgs, the fields this server runs)."""

    ad_model: str = "None"
    ad_tap_enable: bool = True
    ad_prompt: str = ""
    ad_negative_prompt: str = ""
    ad_confidence: float = 0.3
    ad_mask_k_largest: int = 0
    ad_mask_min_ratio: float = 0.0
    ad_mask_max_ratio: float = 1.0
    ad_dilate_erode: int = 4
    ad_x_offset: int = 0
    ad_y_offset: int = 0
    ad_mask_merge_invert: str = "None"
    ad_mask_blur: int = 4
    ad_denoising_strength: float = 0.4
    ad_inpaint_only_masked: bool = True
    ad_inpaint_only_masked_padding: int = 32
    ad_use_inpaint_width_height: bool = False
    ad_inpaint_width: int = 512
    ad_inpaint_height: int = 512
    ad_use_steps: bool = False
    ad_steps: int = 28
    ad_use_cfg_scale: bool = False
    ad_cfg_scale: float = 7.0
    ad_use_sampler: bool = False
    ad_sampler: str = "DPM++ 2M"  # A1111 1.9 names (the schedule is ad_scheduler)
    ad_scheduler: str = SAME_SCHEDULER
    ad_use_noise_multiplier: bool = False
    ad_noise_multiplier: float = 1.0
    ad_use_clip_skip: bool = False
    ad_clip_skip: int = 1
    model_path: str = ""  # the detector file, filled in when the job is submitted

    @property
    def active(self) -> bool:
        return self.ad_model != "None" and self.ad_tap_enable


# field -> (low, high) for numbers; None: no bound on that side (ADetailer's pydantic types)
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "ad_confidence": (0.0, 1.0), "ad_mask_k_largest": (0, None),
    "ad_mask_min_ratio": (0.0, 1.0), "ad_mask_max_ratio": (0.0, 1.0),
    "ad_dilate_erode": (-128, 128), "ad_x_offset": (-4096, 4096), "ad_y_offset": (-4096, 4096),
    "ad_mask_blur": (0, 64), "ad_denoising_strength": (0.0, 1.0),
    "ad_inpaint_only_masked_padding": (0, 256), "ad_inpaint_width": (64, 4096),
    "ad_inpaint_height": (64, 4096), "ad_steps": (1, 150), "ad_cfg_scale": (0.0, 30.0),
    "ad_noise_multiplier": (0.5, 1.5), "ad_clip_skip": (1, 12),
}  # fmt: skip
# ADetailer fields this server does not run: refused unless off / at their default
_UNSUPPORTED: dict[str, Any] = {
    "ad_model_classes": "", "ad_use_checkpoint": False, "ad_use_vae": False,
    "ad_restore_face": False, "ad_controlnet_model": "None",
}  # fmt: skip
# a separate checkpoint or VAE switched on but naming the job's own is no change
_SAME = {"ad_use_checkpoint": ("ad_checkpoint", "Use same checkpoint"),
         "ad_use_vae": ("ad_vae", "Use same VAE")}  # fmt: skip
# accepted and without effect here, as in ADetailer when their switch is off
_INERT = ("ad_checkpoint", "ad_vae", "ad_controlnet_module",
          "ad_controlnet_weight", "ad_controlnet_guidance_start", "ad_controlnet_guidance_end",
          "is_api")  # fmt: skip
_FIELDS = {f.name: f for f in fields(DetailerUnit) if f.name != "model_path"}


def unit_from_dict(data: Mapping[str, Any], index: int = 0) -> DetailerUnit:
    """One unit from ADetailer's dict of ad_* keys; UnitError names a bad or unknown key."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _UNSUPPORTED:
            same = key in _SAME and data.get(_SAME[key][0]) in (None, "", "None", _SAME[key][1])
            if value not in (None, _UNSUPPORTED[key]) and not same:
                raise UnitError((index, key), "not supported by this server")
            continue
        if key in _INERT:
            continue
        if key not in _FIELDS:
            raise UnitError((index, key), "unknown ADetailer field")
        if value is not None:
            values[key] = _checked(key, value, (index, key))
    unit = DetailerUnit(**values)
    if unit.ad_mask_min_ratio > unit.ad_mask_max_ratio:
        raise UnitError((index, "ad_mask_min_ratio"), "must not be over ad_mask_max_ratio")
    return unit


def _checked(key: str, value: Any, loc: tuple[Any, ...]) -> Any:
    default = _FIELDS[key].default
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UnitError(loc, f"expected true or false, got {value!r}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise UnitError(loc, f"expected text, got {value!r}")
        if key == "ad_mask_merge_invert" and value not in MERGE_INVERT:
            raise UnitError(loc, f"expected one of {', '.join(MERGE_INVERT)}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnitError(loc, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise UnitError(loc, f"expected a finite number, got {value!r}")
    if isinstance(default, int):
        if not float(value).is_integer():
            raise UnitError(loc, f"expected a whole number, got {value!r}")
        value = int(value)
    low, high = _RANGES.get(key, (None, None))
    if low is not None and value < low:
        raise UnitError(loc, f"must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise UnitError(loc, f"must be at most {high:g}, got {value:g}")
    return float(value) if isinstance(default, float) else value


def units_from_args(args: Any) -> tuple[bool, bool, tuple[DetailerUnit, ...]]:
    """(enabled, skip_img2img, units) from ADetailer's script args as its API takes them:
    a list whose first item may be the enable switch (a bool), whose second may be
    "skip img2img" (a bool), and whose dicts are the units; or one dict. UnitError's loc
    starts with the item's index in `args`."""
    if isinstance(args, Mapping):
        args = [args]
    if not isinstance(args, Sequence) or isinstance(args, str):
        raise UnitError((), "expected a list: [enable, skip_img2img, {unit}, {unit}, ...]")
    enabled = args[0] if args and isinstance(args[0], bool) else True
    skip = len(args) >= 2 and isinstance(args[0], bool) and args[1] is True
    units = []
    for index, item in enumerate(args):
        if isinstance(item, Mapping):
            units.append(unit_from_dict(item, index))
        elif not (isinstance(item, bool) and index < 2):
            raise UnitError((index,), f"expected a dict of ad_* fields, got {item!r}")
    if not units:
        raise UnitError((), "no unit: give at least one dict of ad_* fields")
    if len(units) > MAX_UNITS:
        raise UnitError((), f"at most {MAX_UNITS} units")
    return enabled, skip, tuple(units)


def ordinal_suffix(n: int) -> str:
    """The name suffix of unit n: none for the first, then " 2nd", " 3rd", " 4th"..."""
    if n == 0:
        return ""
    number = n + 1
    tail = "th" if 11 <= number % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f" {number}{tail}"


def unit_fields(unit: DetailerUnit, n: int) -> dict[str, Any]:
    """ADetailer's infotext fields of one unit, only those it writes for these values."""
    u = unit
    out: dict[str, Any] = {"ADetailer model": u.ad_model}
    if u.ad_prompt:
        out["ADetailer prompt"] = u.ad_prompt
    if u.ad_negative_prompt:
        out["ADetailer negative prompt"] = u.ad_negative_prompt
    out["ADetailer confidence"] = u.ad_confidence
    optional = [
        ("ADetailer mask only top k largest", u.ad_mask_k_largest, 0),
        ("ADetailer mask min ratio", u.ad_mask_min_ratio, 0.0),
        ("ADetailer mask max ratio", u.ad_mask_max_ratio, 1.0),
        ("ADetailer x offset", u.ad_x_offset, 0),
        ("ADetailer y offset", u.ad_y_offset, 0),
    ]
    out.update({name: value for name, value, default in optional if value != default})
    out["ADetailer dilate erode"] = u.ad_dilate_erode
    if u.ad_mask_merge_invert != "None":
        out["ADetailer mask merge invert"] = u.ad_mask_merge_invert
    out["ADetailer mask blur"] = u.ad_mask_blur
    out["ADetailer denoising strength"] = u.ad_denoising_strength
    out["ADetailer inpaint only masked"] = u.ad_inpaint_only_masked
    if u.ad_inpaint_only_masked:
        out["ADetailer inpaint padding"] = u.ad_inpaint_only_masked_padding
    if u.ad_use_inpaint_width_height:
        out["ADetailer use inpaint width height"] = True
        out["ADetailer inpaint width"] = u.ad_inpaint_width
        out["ADetailer inpaint height"] = u.ad_inpaint_height
    if u.ad_use_steps:
        out.update({"ADetailer use separate steps": True, "ADetailer steps": u.ad_steps})
    if u.ad_use_cfg_scale:
        out.update(
            {"ADetailer use separate CFG scale": True, "ADetailer CFG scale": u.ad_cfg_scale}
        )
    if u.ad_use_sampler:
        out.update({"ADetailer use separate sampler": True, "ADetailer sampler": u.ad_sampler})
        if u.ad_scheduler != SAME_SCHEDULER:
            out["ADetailer scheduler"] = u.ad_scheduler
    if u.ad_use_noise_multiplier:
        out["ADetailer use separate noise multiplier"] = True
        out["ADetailer noise multiplier"] = u.ad_noise_multiplier
    if u.ad_use_clip_skip:
        out["ADetailer use separate CLIP skip"] = True
        out["ADetailer CLIP skip"] = u.ad_clip_skip
    suffix = ordinal_suffix(n)
    return {f"{name}{suffix}": value for name, value in out.items()}


def infotext_fields(units: Sequence[DetailerUnit]) -> dict[str, Any]:
    """The job's ADetailer fields (none when no unit runs), "ADetailer version" last."""
    out: dict[str, Any] = {}
    for n, unit in enumerate(units):
        if unit.active:
            out.update(unit_fields(unit, n))
    if out:
        out["ADetailer version"] = ADETAILER_VERSION
    return out


_NAME_TO_KEY = {
    "model": "ad_model", "prompt": "ad_prompt", "negative prompt": "ad_negative_prompt",
    "confidence": "ad_confidence", "mask only top k largest": "ad_mask_k_largest",
    "mask min ratio": "ad_mask_min_ratio", "mask max ratio": "ad_mask_max_ratio",
    "x offset": "ad_x_offset", "y offset": "ad_y_offset", "dilate erode": "ad_dilate_erode",
    "mask merge invert": "ad_mask_merge_invert", "mask blur": "ad_mask_blur",
    "denoising strength": "ad_denoising_strength",
    "inpaint only masked": "ad_inpaint_only_masked",
    "inpaint padding": "ad_inpaint_only_masked_padding",
    "use inpaint width height": "ad_use_inpaint_width_height",
    "inpaint width": "ad_inpaint_width", "inpaint height": "ad_inpaint_height",
    "use separate steps": "ad_use_steps", "steps": "ad_steps",
    "use separate CFG scale": "ad_use_cfg_scale", "CFG scale": "ad_cfg_scale",
    "use separate sampler": "ad_use_sampler", "sampler": "ad_sampler",
    "scheduler": "ad_scheduler", "use separate noise multiplier": "ad_use_noise_multiplier",
    "noise multiplier": "ad_noise_multiplier", "use separate CLIP skip": "ad_use_clip_skip",
    "CLIP skip": "ad_clip_skip",
}  # fmt: skip
_FIELD_RE = re.compile(r"ADetailer (.+?)(?: (\d+)(?:st|nd|rd|th))?$")


def units_from_infotext(fields_: Mapping[str, Any], count: int = 2) -> tuple[DetailerUnit, ...]:
    """The units an infotext's parsed fields describe (at least `count`, "None" where a
    unit is absent); values that do not fit are left at their defaults."""
    found: dict[int, dict[str, Any]] = {}
    for name, value in fields_.items():
        match = _FIELD_RE.fullmatch(str(name))
        key = _NAME_TO_KEY.get(match.group(1)) if match else None
        if key is None:
            continue
        index = int(match.group(2)) - 1 if match.group(2) else 0
        found.setdefault(index, {})[key] = _from_text(key, value)
    units = [DetailerUnit() for _ in range(max(count, max(found, default=-1) + 1))]
    for index, values in found.items():
        unit = units[index]
        for key, value in values.items():
            try:
                unit = replace(unit, **{key: _checked(key, value, (index, key))})
            except UnitError:
                continue
        units[index] = unit
    return tuple(units)


def _from_text(key: str, value: Any) -> Any:
    """An infotext value (text) as the field's type."""
    default = _FIELDS[key].default
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if isinstance(default, bool):
        return {"true": True, "false": False}.get(value.strip().lower(), value)
    try:
        return float(value)
    except ValueError:
        return value
