"""The X/Y/Z plot's ControlNet axes, as sd-webui-controlnet adds them to A1111's plot.

The extension's `xyz_grid_support.py` appends `[ControlNet] Model`, `[ControlNet] Weight`,
`[ControlNet] Guidance Start`, `[ControlNet] Guidance End`, `[ControlNet] Control Mode`,
`[ControlNet] Resize Mode`, `[ControlNet] Preprocessor`, `[ControlNet] Pre Resolution`,
`[ControlNet] Pre Threshold A` and `[ControlNet] Pre Threshold B` (in that order here,
after every other axis, so the other axes keep their indices). As there, a value applies
to every enabled unit of the job (the extension's plain value is "the same for each
unit"). The job must have an enabled unit (else the axis is refused, not ignored); a model
is looked up in `models/ControlNet` when the plot is submitted and its file recorded in
the units; a preprocessor keeps the unit's resolution and thresholds where they lie in the
new preprocessor's ranges, else takes its defaults (`controlnet_units.checked`); the
resolution and threshold axes give the preprocessor their values as they are (as the
extension does).

Not built: the extension's `[ControlNet] Enabled` axis (it switches unit 0 on, whose
model the service has not looked up when the unit came disabled) and its per-unit list
notation (`[0.5, , 1]`).

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...core.controlnet_units import CONTROL_MODES, NO_MODEL, RESIZE_MODES, checked
from ...imaging.control_preprocessors import preprocessor_named
from ...model_manager.controlnet_files import find_controlnet, list_controlnets
from .common import float_range, int_range

PREFIX = "[ControlNet] "


@dataclass(frozen=True)
class ModelValue:
    """A `[ControlNet] Model` value: the model's label and file (None: "None")."""

    label: str
    path: str | None

    def __str__(self) -> str:
        return self.label


def _applies(params: Any) -> str | None:
    if any(unit.active for unit in getattr(params, "controlnet", ()) or ()):
        return None
    return "ControlNet axes need an enabled ControlNet unit"


def _on_units(params: Any, change: Callable[[Any], Any]) -> Any:
    units = tuple(change(u) if u.active else u for u in params.controlnet)
    return replace(params, controlnet=units)


def _setter(field: str) -> Callable[[Any, Any], Any]:
    return lambda params, value: _on_units(params, lambda u: replace(u, **{field: value}))


def _choices(names: tuple[str, ...]) -> Callable[[list[str], Any], list[str]]:
    def read(texts: list[str], check: Any) -> list[str]:
        by_lower = {n.lower(): n for n in names}
        out = []
        for text in texts:
            if text.lower() not in by_lower:
                raise ValueError(f"unknown value {text!r}; known: {', '.join(names)}")
            out.append(by_lower[text.lower()])
        return out

    return read


def _modules(texts: list[str], check: Any) -> list[str]:
    out = []
    for text in texts:
        module = preprocessor_named(text)
        if module is None:
            raise ValueError(f"unknown preprocessor {text!r}")
        if module.clip:
            raise ValueError(f"{text} feeds CLIP vision tokens to an IP-Adapter or the T2I "
                             "style adapter: it needs its own model")  # fmt: skip
        out.append(module.name)
    return out


def _models(texts: list[str], check: Any) -> list[ModelValue]:
    folder = getattr(check, "controlnet_dir", None)
    if folder is None:
        raise ValueError("no ControlNet models folder to look the model up in")
    folder = Path(folder)
    models = list_controlnets(folder)
    out = []
    for text in texts:
        if text in (NO_MODEL, ""):
            out.append(ModelValue(NO_MODEL, None))
            continue
        found = find_controlnet(models, text)
        if found is None:
            known = ", ".join(models) or f"none in {folder}"
            raise ValueError(f"model not found: {text} (available: {known})")
        if found.kind in ("ip-adapter", "t2i-style"):
            raise ValueError(f"{found.label} takes CLIP vision tokens: it needs its own "
                             "preprocessor")  # fmt: skip
        out.append(ModelValue(found.label, str(found.path)))
    return out


def _set_model(params: Any, value: ModelValue) -> Any:
    return _on_units(params, lambda u: replace(u, model=value.label, model_path=value.path,
                                               model_label=value.label))  # fmt: skip


def _set_module(params: Any, value: str) -> Any:
    return _on_units(params, lambda u: checked(replace(u, module=value)))


def controlnet_axes(axis_type: type) -> list[Any]:
    """The ControlNet axes (`axis_type`: xyz_axes.Axis), in the extension's order."""
    specs = (("Model", _models, _set_model, True),
             ("Weight", float_range(0, 2), _setter("weight"), False),
             ("Guidance Start", float_range(0, 1), _setter("guidance_start"), False),
             ("Guidance End", float_range(0, 1), _setter("guidance_end"), False),
             ("Control Mode", _choices(CONTROL_MODES), _setter("control_mode"), False),
             ("Resize Mode", _choices(RESIZE_MODES), _setter("resize_mode"), False),
             ("Preprocessor", _modules, _set_module, False),
             ("Pre Resolution", int_range(64, 2048), _setter("processor_res"), False),
             ("Pre Threshold A", float_range(0, 1024), _setter("threshold_a"), False),
             ("Pre Threshold B", float_range(0, 1024), _setter("threshold_b"), False))  # fmt: skip
    return [axis_type(PREFIX + name, read, apply, costly=costly, applies=_applies)
            for name, read, apply, costly in specs]  # fmt: skip
