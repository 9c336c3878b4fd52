"""Built-in script "Prompts from file or textbox": one generation per line.

A line is a prompt, or A1111's command-line form with per-line overrides:
`--prompt "a cat" --negative_prompt "blurry" --steps 10 --cfg_scale 5 --seed 3
--sampler_name "Euler a" --width 512 --height 512 --n_iter 2 --batch_size 1 --subseed 5
--subseed_strength 0.2 --seed_resize_from_w 512 --seed_resize_from_h 512`.
Lines are read as A1111 reads them (shlex; a prompt may run over several words until the
next `--option`) and are all checked when the job is submitted: an unknown option or a
bad value names the line. The line's prompt is joined to the prompt of the tab, at the
start or at the end.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import random
import shlex
from dataclasses import replace
from typing import Any

from ...core.params import MAX_SEED, ParamError
from ...core.samplers import SAMPLERS
from ..api import ArgError, Control, Extension, Section

TITLE = "Prompts from file or textbox"
MAX_LINES = 1000
_STRING = ("prompt", "negative_prompt", "sampler_name", "styles", "sd_model", "prompt_for_display")
_INT = ("seed", "sampler_index", "batch_size", "n_iter", "steps", "width", "height",
        "subseed", "seed_resize_from_h", "seed_resize_from_w")  # fmt: skip
_FLOAT = ("cfg_scale", "subseed_strength")
_AS_IS = ("seed", "steps", "width", "height", "batch_size", "cfg_scale", "sampler_name",
          "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w")  # fmt: skip
_BOOL = ("do_not_save_samples", "do_not_save_grid", "restore_faces", "tiling")
# options A1111 knows that this web UI cannot do: refused with a reason, never ignored
_REFUSED = {"outpath_samples": "per-line output folders",
            "outpath_grids": "per-line output folders"}  # fmt: skip


def setup() -> Extension:
    # declared in A1111's argument order, so positional script_args map onto the same names
    controls = (
        Control("checkbox_iterate", "Iterate seed every line", "checkbox", False),
        Control("checkbox_iterate_batch", "Use same random seed for all lines", "checkbox", False),
        Control("prompt_position", "Insert prompts at the", "radio", "start", choices=("start", "end")),
        Control("prompt_txt", "List of prompt inputs", "textbox", "", lines=4,
                info="One prompt per line; a line may set options: --steps 10 --cfg_scale 5 ..."),
    )  # fmt: skip
    return Extension(
        name="prompts_from_file",
        title=TITLE,
        version="1",
        description="Run one generation per line, with per-line --option overrides.",
        section=Section(TITLE, controls),
        run=run,
        check_args=check_args,
    )


def parse_line(line: str) -> dict[str, Any]:
    """A1111's `cmdargs`: `--tag value` pairs; a plain line is just a prompt."""
    if "--" not in line:
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ValueError(f"cannot read the quotes: {exc}") from None
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(words):
        word = words[pos]
        if not word.startswith("--"):
            raise ValueError(f'must start with "--": {word}')
        if pos + 1 >= len(words):
            raise ValueError(f"missing argument for command line option {word}")
        tag = word[2:]
        if tag in ("prompt", "negative_prompt"):
            pos += 1
            text = words[pos]
            pos += 1
            while pos < len(words) and not words[pos].startswith("--"):
                text += " " + words[pos]
                pos += 1
            out[tag] = text
            continue
        out[tag] = _value(tag, words[pos + 1])
        pos += 2
    return out


def _value(tag: str, text: str) -> Any:
    if tag in _REFUSED:
        raise ValueError(f"--{tag}: {_REFUSED[tag]} are not supported by this web UI")
    if tag in _STRING:
        return text
    try:
        if tag in _INT:
            return int(text)
        if tag in _FLOAT:
            return float(text)
    except ValueError:
        raise ValueError(f"--{tag}: expected a number, got {text!r}") from None
    if tag in _BOOL:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"--{tag}: expected true or false, got {text!r}")
        return text.lower() == "true"
    raise ValueError(f"unknown commandline option: {tag}")


def line_params(base: Any, line: dict[str, Any], position: str, check: Any) -> Any:
    """The job params for one parsed line."""
    changes: dict[str, Any] = {}
    for tag, value in line.items():
        if tag in ("prompt", "negative_prompt"):
            ui = getattr(base, tag)
            joined = f"{value} {ui}" if position == "start" else f"{ui} {value}"
            changes[tag] = joined if ui and value else (value or ui)
        elif tag in _AS_IS:
            changes[tag] = value
        elif tag == "n_iter":
            changes["batch_count"] = value
        elif tag == "sampler_index":
            if not 0 <= value < len(SAMPLERS):
                raise ValueError(f"--sampler_index: {value} is not an index of the sampler list")
            changes["sampler_name"] = SAMPLERS[value]
        elif tag == "styles":
            changes["styles"] = tuple(s.strip() for s in value.split(",") if s.strip())
        elif tag == "sd_model":
            changes["checkpoint"] = check.resolve_checkpoint(value)
        elif tag == "do_not_save_samples":
            changes["save_images"] = base.save_images and not value
        elif tag == "tiling":
            changes["tiling"] = value
        elif tag == "restore_faces":  # the model was resolved when the job was sent
            if value and base.face_restorer is None:
                raise ValueError(
                    "--restore_faces true: tick Restore faces for the job, then "
                    "lines can turn it off with --restore_faces false"
                )
            changes["restore_faces"] = value
    return replace(base, **changes)


def _lines(args: dict) -> list[str]:
    return [s.strip() for s in (args["prompt_txt"] or "").splitlines() if s.strip()]


def _jobs(base: Any, args: dict, check: Any) -> list[Any]:
    lines = _lines(args)
    if not lines:
        raise ArgError(("prompt_txt",), "give at least one line")
    if len(lines) > MAX_LINES:
        raise ArgError(("prompt_txt",), f"{len(lines)} lines; at most {MAX_LINES}")
    jobs = []
    for n, text in enumerate(lines, start=1):
        try:
            params = line_params(base, parse_line(text), args["prompt_position"], check)
            jobs.append(params.validated())
        except (ValueError, LookupError, ParamError) as exc:
            raise ArgError(("prompt_txt",), f"line {n}: {exc}") from None
    return jobs


def check_args(args: dict, check: Any) -> dict:
    _jobs(check.params, args, check)
    # A1111: with a random seed (-1) and neither box ticked, every line gets its own seed
    return {**args, "random_seed": check.params.seed == -1}


def run(script: Any, args: dict) -> list[Any]:
    fresh = (args.get("random_seed") and not args["checkbox_iterate"]
             and not args["checkbox_iterate_batch"])  # fmt: skip
    base = script.params
    jobs = _jobs(base, args, script.check)
    images: list[Any] = []
    seed = base.seed
    rng = random.SystemRandom()
    for n, params in enumerate(jobs):
        if script.should_stop():
            break
        script.status(f"{TITLE}: line {n + 1} of {len(jobs)}")
        if params.seed == base.seed:  # the line did not set its own seed
            params = replace(params, seed=rng.randint(0, MAX_SEED) if fresh else seed)
        params = params.with_seed()  # a line's --seed -1: a random seed of its own
        images += script.process(params)
        if args["checkbox_iterate"]:
            seed = (seed + params.batch_size * params.batch_count) % (MAX_SEED + 1)
    return images
