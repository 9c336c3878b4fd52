"""Built-in script "Prompt matrix": every combination of the `|`-separated prompt parts.

`a busy street|illustration|cinematic lighting` gives 4 images: the first part alone,
with each optional part, and with both; they form a grid whose column and row labels list
the optional parts, struck through where a part is left out (A1111's layout: the first
half of the parts across, the rest down).

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...core.params import ParamError
from ..api import ArgError, Control, Extension, Section
from .common import with_fields
from .grid import Label, annotated_grid, image_grid

TITLE = "Prompt matrix"
MAX_PARTS = 8  # 2**8 = 256 images


def setup() -> Extension:
    controls = (
        Control("put_at_start", "Put variable parts at start of prompt", "checkbox", False),
        Control("different_seeds", "Use different seed for each picture", "checkbox", False),
        Control("prompt_type", "Select prompt", "radio", "positive", choices=("positive", "negative")),
        Control("variations_delimiter", "Select joining char", "radio", "comma", choices=("comma", "space")),
        Control("margin_size", "Grid margins (px)", "slider", 0, minimum=0, maximum=500, step=2),
    )  # fmt: skip
    return Extension(
        name="prompt_matrix",
        title=TITLE,
        version="1",
        description="Separate optional prompt parts with | to get one image per combination.",
        section=Section(TITLE, controls),
        run=run,
        check_args=check_args,
    )


def _parts(params: Any, args: dict) -> list[str]:
    text = params.prompt if args["prompt_type"] == "positive" else params.negative_prompt
    return text.split("|")


def check_args(args: dict, check: Any) -> dict:
    parts = _parts(check.params, args)
    if len(parts) - 1 > MAX_PARTS:
        raise ArgError(
            (), f"{len(parts) - 1} optional parts give too many images; at most {MAX_PARTS}"
        )
    field = "prompt" if args["prompt_type"] == "positive" else "negative_prompt"
    delimiter = ", " if args["variations_delimiter"] == "comma" else " "
    for n, prompt in enumerate(combinations(parts, args["put_at_start"], delimiter)):
        try:  # a combination may nest deeper or run longer than the prompt it comes from
            replace(check.params, **{field: prompt}).validated()
        except ParamError as exc:
            raise ArgError(
                (), f"combination {n + 1} ({prompt[:60]!r}) is not valid: {exc}"
            ) from None
    return args


def combinations(parts: list[str], put_at_start: bool, delimiter: str) -> list[str]:
    """A1111's order: combination n has optional part i when bit i of n is set."""
    prompts = []
    for n in range(2 ** (len(parts) - 1)):
        chosen = [text.strip().strip(",") for i, text in enumerate(parts[1:]) if n & (1 << i)]
        chosen = [*chosen, parts[0]] if put_at_start else [parts[0], *chosen]
        prompts.append(delimiter.join(chosen))
    return prompts


def run(script: Any, args: dict) -> list[Any]:
    params = script.params
    parts = _parts(params, args)
    delimiter = ", " if args["variations_delimiter"] == "comma" else " "
    prompts = combinations(parts, args["put_at_start"], delimiter)
    field = "prompt" if args["prompt_type"] == "positive" else "negative_prompt"
    images = []
    for i, prompt in enumerate(prompts):
        if script.should_stop():
            break
        script.status(f"{TITLE}: {i + 1} of {len(prompts)}")
        seed = params.seed + i if args["different_seeds"] else params.seed
        one = replace(params, batch_count=1, batch_size=1, seed=seed, **{field: prompt})
        images += script.process(one)[:1]
    if not images:
        return []
    optional = [p.strip() for p in parts[1:]]
    across = optional[: (len(optional) + 1) // 2]
    down = optional[len(across) :]
    cols, rows = 2 ** len(across), 2 ** len(down)
    cells = [g.image for g in images]
    cells += [cells[0].copy().point(lambda _: 255)] * (rows * cols - len(cells))
    col_labels = [[Label(t, bool(n & (1 << i))) for i, t in enumerate(across)] for n in range(cols)]
    row_labels = [[Label(t, bool(n & (1 << i))) for i, t in enumerate(down)] for n in range(rows)]
    margin = int(args["margin_size"])
    sheet = (annotated_grid(cells, col_labels, row_labels, margin) if optional
             else image_grid(cells, 1, 1))  # fmt: skip
    infotext = with_fields(images[0].infotext, {"Script": TITLE})
    grid = script.image(sheet, images[0].seed, infotext, script.save_grid(sheet, infotext))
    return [grid, *images]
