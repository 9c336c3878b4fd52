"""Built-in script "X/Y/Z plot": one image per combination of up to three axes, and a grid.

Written on the public extension API like any extension: controls by name, `check_args`
reads and checks every axis when the job is submitted (so a typo is a clear error, not a
failed job), `run` generates the cells through `ScriptRun.process` and saves the grid
with labelled axes to the grids folder (one grid per Z value, side by side).

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from ...core.params import MAX_SEED, ParamError
from ..api import ArgError, Control, Extension, Section
from .common import with_fields
from .grid import Label, annotated_grid, batch_grid, stack_grids
from .xyz_axes import NOTHING, Axis, apply_value, axis_by_label, build_axes, read_axis

log = logging.getLogger(__name__)

TITLE = "X/Y/Z plot"
MAX_CELLS = 500
_VALUES_INFO = "Comma-separated; ranges: 1-5, 1-5 (+2), 1-10 [5]"


def _axis_labels() -> tuple[str, ...]:
    from ...core.params import Txt2ImgParams

    return tuple(a.label for a in build_axes(Txt2ImgParams))


def setup() -> Extension:
    labels = _axis_labels()
    controls = []
    for axis, default in (("x", "Seed"), ("y", NOTHING), ("z", NOTHING)):
        upper = axis.upper()
        controls += [
            Control(f"{axis}_type", f"{upper} type", "dropdown", default, choices=labels),
            Control(f"{axis}_values", f"{upper} values", "textbox", "", info=_VALUES_INFO),
        ]
    controls += [
        Control("draw_legend", "Draw legend", "checkbox", True),
        Control("include_lone_images", "Include Sub Images", "checkbox", False),
        Control("include_sub_grids", "Include Sub Grids", "checkbox", False),
        Control("no_fixed_seeds", "Keep -1 for seeds", "checkbox", False),
        Control("margin_size", "Grid margins (px)", "slider", 0, minimum=0, maximum=500, step=2),
    ]
    return Extension(
        name="xyz_plot",
        title=TITLE,
        version="1",
        description="Vary seed, steps, CFG, sampler, checkpoint, prompt... along up to "
        "three axes and save a labelled grid.",
        section=Section(TITLE, tuple(controls)),
        run=run,
        check_args=check_args,
    )


def _axes(args: dict, check: Any) -> list[tuple[Axis, list[Any]]]:
    params = check.params
    out = []
    for axis_name in ("x", "y", "z"):
        try:
            axis = axis_by_label(args[f"{axis_name}_type"], type(params))
        except ValueError as exc:
            raise ArgError((f"{axis_name}_type",), str(exc)) from None
        try:
            values = read_axis(axis, args[f"{axis_name}_values"], check)
        except ValueError as exc:
            raise ArgError((f"{axis_name}_values",), f"{axis.label}: {exc}") from None
        out.append((axis, values))
    return out


_SEED_AXES = ("Seed", "Var. seed")


def _fix_seeds(
    axes: list[tuple[Axis, list[Any]]], keep_random: bool
) -> list[tuple[Axis, list[Any]]]:
    """A1111: -1 in a Seed (or Var. seed) axis is one random seed for the whole plot, unless
    kept."""
    if keep_random:
        return axes
    rng = random.SystemRandom()
    return [(a, [rng.randint(0, MAX_SEED) if a.label in _SEED_AXES and v == -1 else v
                for v in vals])
            for a, vals in axes]  # fmt: skip


def _cell_params(base: Any, axes, index: tuple[int, int, int]) -> Any:
    params = base
    for (axis, values), i in zip(axes, index, strict=True):
        params = apply_value(axis, params, values[i], values)
    if params.seed == -1 or params.subseed == -1:
        params = params.with_seed()
    return params


def check_args(args: dict, check: Any) -> dict:
    axes = _axes(args, check)
    total = len(axes[0][1]) * len(axes[1][1]) * len(axes[2][1])
    if total > MAX_CELLS:
        raise ArgError((), f"{total} cells is more than the {MAX_CELLS} a plot may have")
    for index in _indices(axes):
        try:
            _cell_params(check.params, axes, index).validated()
        except ParamError as exc:
            raise ArgError((), f"the cell {_describe(axes, index)} is not valid: {exc}") from None
    return args


def _indices(axes) -> list[tuple[int, int, int]]:
    """Cells in run order: Z outermost; a costly axis (checkpoint, VAE) changes least."""
    (xa, xs), (ya, ys), (_, zs) = axes
    x_outer = xa.costly and not ya.costly
    out = []
    for iz in range(len(zs)):
        if x_outer:
            out += [(ix, iy, iz) for ix in range(len(xs)) for iy in range(len(ys))]
        else:
            out += [(ix, iy, iz) for iy in range(len(ys)) for ix in range(len(xs))]
    return out


def _describe(axes, index) -> str:
    return ", ".join(a.text(vals[i]) for (a, vals), i in zip(axes, index, strict=True)
                     if a.label != NOTHING) or "(single)"  # fmt: skip


def run(script: Any, args: dict) -> list[Any]:
    axes = _fix_seeds(_axes(args, script.check), args["no_fixed_seeds"])
    (xa, xs), (ya, ys), (za, zs) = axes
    order = _indices(axes)
    cells: dict[tuple[int, int, int], list[Any]] = {}
    for n, index in enumerate(order):
        if script.should_stop():
            break
        script.status(f"{TITLE}: {n + 1} of {len(order)} ({_describe(axes, index)})")
        images = script.process(_cell_params(script.params, axes, index))
        # the detected maps ControlNet units append (no infotext) stay out of the cells, as
        # A1111's plot takes the generated images
        cells[index] = [g for g in images if g.infotext]
    done = [imgs for imgs in cells.values() if imgs]
    if not done:
        return []
    first = done[0][0]
    size = batch_grid([g.image for g in done[0]]).size
    blank = _blank(size)
    legend = args["draw_legend"]
    col_labels = [[Label(xa.text(v))] for v in xs] if legend and xa.label != NOTHING else []
    row_labels = [[Label(ya.text(v))] for v in ys] if legend and ya.label != NOTHING else []
    grids = []
    for iz in range(len(zs)):
        pictures = []
        for iy in range(len(ys)):
            for ix in range(len(xs)):
                imgs = cells.get((ix, iy, iz))
                pictures.append(batch_grid([g.image for g in imgs]).resize(size) if imgs else blank)
        grids.append(annotated_grid(pictures, col_labels, row_labels, int(args["margin_size"])))
    sheet = grids[0]
    if len(zs) > 1:
        titles = [za.text(v) if legend else "" for v in zs]
        sheet = stack_grids(grids, titles, int(args["margin_size"]))
    fields = {"Script": TITLE}
    for name, (axis, _values) in zip("XYZ", axes, strict=True):
        if axis.label != NOTHING:
            fields[f"{name} Type"] = axis.label
            fields[f"{name} Values"] = args[f"{name.lower()}_values"]
    infotext = with_fields(first.infotext, fields)
    shown = [script.image(sheet, first.seed, infotext, script.save_grid(sheet, infotext))]
    if args["include_sub_grids"] and len(grids) > 1:
        shown += [script.image(g, first.seed, infotext) for g in grids]
    if args["include_lone_images"]:
        shown += [g for index in order for g in cells.get(index, [])]
    return shown


def _blank(size: tuple[int, int]):
    from PIL import Image

    return Image.new("RGB", size, (255, 255, 255))
