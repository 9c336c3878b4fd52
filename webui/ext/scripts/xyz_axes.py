"""The axes of the X/Y/Z plot: what each varies, how its values are read and checked.

An axis turns the text a user typed ("1-4", "Euler a, DPM++ 2M") into values, checks
them against the job (a sampler that exists, a checkpoint that is there, the Prompt S/R
search text in the prompt), and applies one value to the job's params. Axes exist only
for what the web UI can actually vary; there are no placeholder axes.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from ...core.params import MAX_SEED
from ...core.sampler_params import BOUNDS
from ...core.samplers import SAMPLERS, SCHEDULE_TYPES, UnknownSamplerError, resolve
from .common import expand_ints, float_range, int_range, split_values
from .xyz_controlnet import controlnet_axes

NOTHING = "Nothing"
_LORA_TAG = re.compile(r"<(lora|lyco):([^:>]+)((?::[^>]*)?)>", re.IGNORECASE)


@dataclass(frozen=True)
class Axis:
    label: str
    read: Callable[[list[str], Any], list[Any]]  # (texts, ArgCheck) -> values
    apply: Callable[[Any, Any], Any]  # (params, value) -> params
    show_label: bool = True  # "Steps: 20" rather than "20"
    costly: bool = False  # switching it reloads weights: iterate it least often
    applies: Callable[[Any], str | None] = lambda params: None  # why it cannot apply

    def text(self, value: Any) -> str:
        shown = value if not isinstance(value, float) or not value.is_integer() else int(value)
        return f"{self.label}: {shown}" if self.show_label else str(shown)


def _seeds(texts: list[str], check: Any) -> list[int]:
    values = expand_ints(texts)
    for v in values:
        if not -1 <= v <= MAX_SEED:
            raise ValueError(f"seed {v} is outside -1..{MAX_SEED}")
    return values


def _samplers(texts: list[str], check: Any) -> list[str]:
    out = []
    for text in texts:
        try:
            out.append(resolve(text, None).sampler if text not in SAMPLERS else text)
        except UnknownSamplerError as exc:
            raise ValueError(str(exc)) from None
    return out


def _schedules(texts: list[str], check: Any) -> list[str]:
    by_lower = {s.lower(): s for s in SCHEDULE_TYPES}
    out = []
    for text in texts:
        if text.lower() not in by_lower:
            raise ValueError(f"unknown schedule type {text!r}; known: {', '.join(SCHEDULE_TYPES)}")
        out.append(by_lower[text.lower()])
    return out


def _checkpoints(texts: list[str], check: Any) -> list[str]:
    out = []
    for text in texts:
        try:
            check.resolve_checkpoint(text)
        except LookupError as exc:
            raise ValueError(str(exc.args[0] if exc.args else exc)) from None
        out.append(text)
    return out


def _vaes(texts: list[str], check: Any) -> list[str]:
    known = check.vae_names()
    for text in texts:
        if text not in known:
            raise ValueError(f"VAE not found: {text}; known: {', '.join(known)}")
    return texts


def _prompt_sr(texts: list[str], check: Any) -> list[str]:
    if not texts:
        return texts
    params = check.params
    first = texts[0]
    if first not in params.prompt and first not in params.negative_prompt:
        raise ValueError(f"Prompt S/R did not find {first!r} in the prompt or negative prompt")
    return texts


def _lora_weights(texts: list[str], check: Any) -> list[float]:
    params = check.params
    if not _LORA_TAG.search(params.prompt) and not _LORA_TAG.search(params.negative_prompt):
        raise ValueError("LoRA weight needs a <lora:name:weight> tag in the prompt")
    return float_range(-10, 10)(texts, check)


def _set_lora_weight(params: Any, weight: float) -> Any:
    def sub(text: str) -> str:
        return _LORA_TAG.sub(lambda m: f"<{m.group(1)}:{m.group(2)}:{weight:g}>", text)

    return replace(params, prompt=sub(params.prompt), negative_prompt=sub(params.negative_prompt))


def _has_field(name: str) -> Callable[[Any], bool]:
    return lambda params: name in {f.name for f in fields(params)}


def _denoising_applies(params: Any) -> str | None:
    if _has_field("denoising_strength")(params):
        return None
    if getattr(params, "hires", None) is None:
        return "Denoising needs hires. fix in txt2img"
    return None


def _refiner_applies(params: Any) -> str | None:
    if params.refiner_checkpoint:
        return None
    return "Refiner switch at needs a refiner: choose its checkpoint in the Refiner section"


def _set_denoising(params: Any, value: float) -> Any:
    if _has_field("denoising_strength")(params):
        return replace(params, denoising_strength=value)
    return replace(params, hires=replace(params.hires, denoising_strength=value))


def build_axes(params_type: type) -> list[Axis]:
    """The axes for a params type (fields that do not exist give no axis)."""
    names = {f.name for f in fields(params_type)}
    axes = [
        Axis(NOTHING, lambda texts, check: [None], lambda p, v: p, show_label=False),
        Axis("Seed", _seeds, lambda p, v: replace(p, seed=v)),
        Axis("Var. seed", _seeds, lambda p, v: replace(p, subseed=v)),
        Axis("Var. strength", float_range(0, 1), lambda p, v: replace(p, subseed_strength=v)),
        Axis("Steps", int_range(1, 150), lambda p, v: replace(p, steps=v)),
        Axis("CFG Scale", float_range(0, 100), lambda p, v: replace(p, cfg_scale=v)),
        Axis("Prompt S/R", _prompt_sr, lambda p, v: p, show_label=False),
        Axis("Sampler", _samplers, lambda p, v: replace(p, sampler_name=v), show_label=False),
        Axis("Schedule type", _schedules, lambda p, v: replace(p, scheduler=v), show_label=False),
        Axis("Checkpoint name", _checkpoints, lambda p, v: replace(p, checkpoint=v),
             show_label=False, costly=True),
        Axis("Clip skip", int_range(1, 12), lambda p, v: replace(p, clip_skip=v)),
    ]  # fmt: skip
    if "denoising_strength" in names or "hires" in names:
        axes.append(
            Axis("Denoising", float_range(0, 1), _set_denoising, applies=_denoising_applies)
        )
    if "vae" in names:
        axes.append(Axis("VAE", _vaes, lambda p, v: replace(p, vae=v), show_label=False,
                         costly=True))  # fmt: skip
    axes.append(Axis("LoRA weight", _lora_weights, _set_lora_weight))
    if "refiner_checkpoint" in names and "init_images" not in names:  # txt2img (core/refiner.py)
        axes.append(Axis("Refiner checkpoint", _checkpoints,
                         lambda p, v: replace(p, refiner_checkpoint=v), show_label=False,
                         costly=True))  # fmt: skip
        axes.append(Axis("Refiner switch at", float_range(0, 1),
                         lambda p, v: replace(p, refiner_switch_at=v), applies=_refiner_applies))  # fmt: skip
    if "distilled_cfg_scale" in names:  # FLUX's guidance (Forge's axis)
        axes.append(Axis("Distilled CFG Scale", float_range(0, 30),
                         lambda p, v: replace(p, distilled_cfg_scale=v)))  # fmt: skip
    if "shift" in names:  # the flow-matching shift (SD 3.5, FLUX.1, Z-Image)
        axes.append(Axis("Shift", float_range(0.1, 30), lambda p, v: replace(p, shift=v)))
    for label, name in _SAMPLER_AXES.items():  # checked per cell: refused where not honoured
        axes.append(Axis(label, float_range(*BOUNDS[name]), _setter(name)))
    if "controlnet" in names:  # sd-webui-controlnet's axes, last (xyz_controlnet.py)
        axes.extend(controlnet_axes(Axis))
    return axes


# A1111's axis label -> params field
_SAMPLER_AXES = {"Eta": "eta", "Sigma Churn": "s_churn", "Sigma min": "s_tmin",
                 "Sigma max": "s_tmax", "Sigma noise": "s_noise"}  # fmt: skip


def _setter(name: str) -> Callable[[Any, Any], Any]:
    return lambda params, value: replace(params, **{name: value})


def axis_by_label(label: Any, params_type: type) -> Axis:
    """The axis named `label` (an index sent by an A1111 client was already turned into
    its label by the dropdown control)."""
    axes = build_axes(params_type)
    wanted = str(label or NOTHING).strip().lower()
    for axis in axes:
        if axis.label.lower() == wanted:
            return axis
    known = ", ".join(a.label for a in axes)
    raise ValueError(f"unknown axis {label!r}; this job can vary: {known}")


def read_axis(axis: Axis, text: str, check: Any) -> list[Any]:
    """The values of one axis; ValueError with a short reason."""
    if axis.label == NOTHING:
        return [None]
    why = axis.applies(check.params)
    if why:
        raise ValueError(why)
    values = axis.read(split_values(text), check)
    if not values:
        raise ValueError(f"{axis.label}: give at least one value")
    return values


def apply_value(axis: Axis, params: Any, value: Any, values: list[Any]) -> Any:
    """`params` with one value of the axis (Prompt S/R replaces its first value)."""
    if axis.label == "Prompt S/R":
        search = values[0]
        return replace(params, prompt=params.prompt.replace(search, value),
                       negative_prompt=params.negative_prompt.replace(search, value))  # fmt: skip
    return axis.apply(params, value)
