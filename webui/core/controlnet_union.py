"""ControlNet Union (xinsir's `controlnet-union-sdxl-1.0` and ProMax): which control mode a unit asks.

A union model is one SDXL ControlNet for several kinds of hint; each call is told the kind
by an index into its task embedding. The indices and names are sd-webui-controlnet's
`ControlNetUnionControlType` (xinsir's order): 0 OpenPose, 1 Depth, 2 Soft Edge (hed,
pidi, scribble, ted), 3 Hard Edge (canny, lineart, anime lineart, mlsd), 4 Normal Map,
5 Segmentation, 6 Tile, 7 Inpaint; the first union model has the first 6, ProMax all 8.

A unit's mode is its `union_control_type` (the extension's API field, its values: "Hard
Edge", ...; the UI sets it from the unit's control type, as the extension's hidden field
does). "Unknown" (the default) means the mode of the unit's preprocessor's control type
(canny -> Hard Edge), so an API client that names only `module` gets the right one. The
extension maps control types to modes by `ControlNetUnionControlType.from_str`; `mode_of_type`
is that map. A union model is listed under every control type whose mode it has.

The model itself is diffusers' `ControlNetUnionModel`, run by `core/controlnet.py`.

This module must never import torch, diffusers or a UI library (the services and the UI
read it).
"""

from __future__ import annotations

UNION_MODES = ("OpenPose", "Depth", "Soft Edge", "Hard Edge", "Normal Map", "Segmentation",
               "Tile", "Inpaint")  # fmt: skip
UNKNOWN = "Unknown"
UNION_NAMES = (*UNION_MODES, UNKNOWN)  # the extension's enum values, in its order
# the extension's ControlNetUnionControlType.from_str: control type (lower case) -> mode
_TYPE_MODES = {"openpose": "OpenPose", "depth": "Depth", "scribble": "Soft Edge",
               "softedge": "Soft Edge", "canny": "Hard Edge", "lineart": "Hard Edge",
               "mlsd": "Hard Edge", "normalmap": "Normal Map", "segmentation": "Segmentation",
               "tile": "Tile", "blur": "Tile", "inpaint": "Inpaint"}  # fmt: skip


def mode_of_type(control_type: str) -> str:
    """The union mode of a control type ("Canny" -> "Hard Edge"); "Unknown" for the others."""
    return _TYPE_MODES.get(str(control_type).lower().replace(" ", "").replace("_", ""), UNKNOWN)


def serves(control_type: str, mode_count: int) -> bool:
    """Whether a union model with `mode_count` modes belongs under `control_type`."""
    mode = mode_of_type(control_type)
    return mode != UNKNOWN and UNION_MODES.index(mode) < mode_count


def unit_mode(union_control_type: str, module_tags: tuple[str, ...]) -> str:
    """A unit's mode: its own, else the first its preprocessor's control types map to."""
    if union_control_type != UNKNOWN:
        return union_control_type
    for tag in module_tags:
        if mode_of_type(tag) != UNKNOWN:
            return mode_of_type(tag)
    return UNKNOWN


def mode_index(mode: str, mode_count: int, unit: int, model: str, module: str) -> int:
    """The task-embedding index of `mode` for a model with `mode_count` modes; a ValueError
    that says what to choose when the unit has none or the model lacks it."""
    if mode == UNKNOWN:
        raise ValueError(f"ControlNet unit {unit}: {model} is a ControlNet Union model and "
                         f"{module} says no control mode: choose a control type (Canny, "
                         "Lineart, Scribble, Tile, Inpaint, ...) or a preprocessor of one, "
                         "or set union_control_type")  # fmt: skip
    index = UNION_MODES.index(mode)
    if index >= mode_count:
        known = ", ".join(UNION_MODES[:mode_count])
        raise ValueError(f"ControlNet unit {unit}: {model} has no {mode} mode (it has: {known}; "
                         "ProMax has Tile and Inpaint)")  # fmt: skip
    return index
