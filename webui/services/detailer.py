"""The detailer's (ADetailer's) request side: its always-on args and its detector list.

ADetailer is asked for as the extension is: `alwayson_scripts: {"ADetailer": {"args":
[enable, skip_img2img, {unit}, {unit}]}}` (the name in any case); the UI sends the same
shape. `split_detailer` takes it out of a request's always-on scripts (the rest go to the
extension host), `detailer_fields` turns it into the params fields `adetailer` and
`adetailer_skip_img2img`, each unit's detector resolved to its file in `models/adetailer`.
A bad unit is a `RequestError` at ("alwayson_scripts", "ADetailer", "args", index, key).

This module must never import torch, diffusers, gradio or fastapi.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.params_detailer import ADETAILER, UnitError, units_from_args
from ..imaging.detection import list_detectors
from .errors import RequestError


def split_detailer(alwayson: Mapping[str, Any]) -> tuple[tuple[str, Any] | None, dict]:
    """((the name as sent, its args) or None, the other always-on scripts)."""
    found = None
    rest = {}
    for name, value in (alwayson or {}).items():
        if str(name).lower() == ADETAILER.lower():
            given = value.get("args") if isinstance(value, Mapping) else value
            found = (str(name), given)
        else:
            rest[name] = value
    return found, rest


def detector_names(folder: Path) -> list[str]:
    """The detectors a unit may name (ADetailer's GET /adetailer/v1/ad_model)."""
    return list(list_detectors(folder))


def detailer_fields(found: tuple[str, Any], kind: str, folder: Path) -> dict[str, Any]:
    """The params fields of the ADetailer args `found` (name, args) for a `kind` job."""
    name, args = found
    loc = ("alwayson_scripts", name, "args")
    if args is None:
        raise RequestError(loc, "ADetailer needs its args: [enable, skip_img2img, {unit}, ...]")
    try:
        enabled, skip, units = units_from_args(args)
    except UnitError as exc:
        raise RequestError((*loc, *exc.loc), exc.message) from None
    if not enabled:
        return {"adetailer": (), "adetailer_skip_img2img": False}
    detectors = list_detectors(folder)
    resolved = []
    for index, unit in _indexed(args, units):
        if unit.ad_model == "None":
            resolved.append(unit)
            continue
        path = detectors.get(unit.ad_model)
        if path is None:
            known = ", ".join(detectors) or f"none: put YOLO .onnx detectors into {folder}"
            raise RequestError((*loc, index, "ad_model"),
                               f"detector not found: {unit.ad_model} (available: {known})")  # fmt: skip
        resolved.append(replace(unit, model_path=str(path)))
    return {"adetailer": tuple(resolved), "adetailer_skip_img2img": skip and kind == "img2img"}


def _indexed(args: Any, units: tuple) -> list[tuple[int, Any]]:
    """Each unit with its index in the args list (a lone dict is index 0)."""
    if isinstance(args, Mapping):
        return [(0, units[0])]
    indexes = [i for i, item in enumerate(args) if isinstance(item, Mapping)]
    return list(zip(indexes, units, strict=True))
