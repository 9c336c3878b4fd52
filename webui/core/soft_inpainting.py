"""Soft inpainting's settings: A1111 1.7's built-in "Soft Inpainting" extension.

Soft inpainting blends the original into the inpainted latents at every step by the
*partial* mask (a blurred mask's grey edge keeps some of the original), instead of the
hard 0/1 blend, and composites the final pixels by how much each region changed. The
work is in `webui.core.soft_blend`; this module holds what the params, the API, the UI
and the infotext share: the six settings with A1111's defaults and slider ranges, their
checks, their infotext fields (A1111's names) and A1111's API arg order
(`alwayson_scripts: {"soft inpainting": {"args": [enabled, schedule bias, preservation
strength, transition contrast boost, mask influence, difference threshold, difference
contrast]}}`).

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

TITLE = "Soft Inpainting"  # A1111's script title; the API key is its lower case
API_KEY = TITLE.lower()
ENABLED_FIELD = "Soft inpainting enabled"
ENABLED_LABEL = "Soft inpainting"


@dataclass(frozen=True)
class Setting:
    """One slider: its A1111 label, infotext field, help text, range and step."""

    name: str
    label: str
    field: str
    info: str
    minimum: float
    maximum: float
    step: float


SETTINGS: tuple[Setting, ...] = (
    Setting("mask_blend_power", "Schedule bias", "Soft inpainting schedule bias",
            "Shifts when preservation of original content occurs during denoising.",
            0, 8, 0.1),
    Setting("mask_blend_scale", "Preservation strength",
            "Soft inpainting preservation strength",
            "How strongly partially masked content should be preserved.", 0, 8, 0.05),
    Setting("inpaint_detail_preservation", "Transition contrast boost",
            "Soft inpainting transition contrast boost",
            "Amplifies the contrast that may be lost in partially masked regions.", 1, 32, 0.5),
    Setting("composite_mask_influence", "Mask influence", "Soft inpainting mask influence",
            "How strongly the original mask should bias the difference threshold.", 0, 1, 0.05),
    Setting("composite_difference_threshold", "Difference threshold",
            "Soft inpainting difference threshold",
            "How much an image region can change before the original pixels are not blended "
            "in anymore.", 0, 8, 0.25),
    Setting("composite_difference_contrast", "Difference contrast",
            "Soft inpainting difference contrast",
            "How sharp the transition should be between blended and not blended.", 0, 8, 0.25),
)  # fmt: skip


@dataclass(frozen=True)
class SoftInpainting:
    """The six settings (A1111's names and defaults); present on the params = enabled."""

    mask_blend_power: float = 1.0  # Schedule bias
    mask_blend_scale: float = 0.5  # Preservation strength
    inpaint_detail_preservation: float = 4.0  # Transition contrast boost
    composite_mask_influence: float = 0.0  # Mask influence
    composite_difference_threshold: float = 0.5  # Difference threshold
    composite_difference_contrast: float = 2.0  # Difference contrast

    def validated(self) -> SoftInpainting:
        """Raise ValueError naming the setting (its A1111 label) when out of range."""
        for setting in SETTINGS:
            value = getattr(self, setting.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{setting.label}: expected a number, got {value!r}")
            if not math.isfinite(value) or not setting.minimum <= value <= setting.maximum:
                raise ValueError(
                    f"{setting.label}: must be between {setting.minimum:g} and "
                    f"{setting.maximum:g}, got {value!r}"
                )
        return self

    def infotext_fields(self) -> dict[str, Any]:
        """A1111's fields, in its order."""
        out: dict[str, Any] = {ENABLED_FIELD: True}
        for setting in SETTINGS:
            out[setting.field] = getattr(self, setting.name)
        return out


DEFAULTS = SoftInpainting()
NAMES = tuple(f.name for f in fields(SoftInpainting))


def from_args(args: Any) -> SoftInpainting | None:
    """A1111's API args `[enabled, power, scale, detail, influence, threshold, contrast]`
    (missing ones: the defaults) as settings; None when not enabled. ValueError says why."""
    if isinstance(args, Mapping):
        args = args.get("args", [])
    if not isinstance(args, Sequence) or isinstance(args, str | bytes):
        raise ValueError("args must be a list: [enabled, schedule bias, preservation strength, "
                         "transition contrast boost, mask influence, difference threshold, "
                         "difference contrast]")  # fmt: skip
    if len(args) > 1 + len(SETTINGS):
        raise ValueError(f"expected at most {1 + len(SETTINGS)} args, got {len(args)}")
    if not args or not _truthy(args[0]):
        return None
    given: dict[str, Any] = {}
    for setting, value in zip(SETTINGS, args[1:], strict=False):
        if value is not None:
            given[setting.name] = _number(value, setting.label)
    return SoftInpainting(**given).validated()


def from_infotext(fields_: Mapping[str, Any]) -> SoftInpainting | None:
    """The settings an infotext records; None when it has no "Soft inpainting enabled"."""
    if not _truthy(fields_.get(ENABLED_FIELD, False)):
        return None
    given = {s.name: _number(fields_[s.field], s.label) for s in SETTINGS if s.field in fields_}
    return SoftInpainting(**given).validated()


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def _number(value: Any, label: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{label}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{label}: expected a number, got {value!r}") from None
