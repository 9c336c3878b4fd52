"""Skip Layer Guidance (SLG) for SD 3.5, as diffusers' `StableDiffusion3Pipeline` and
ComfyUI's SkipLayerGuidanceSD3 node run it (Stability's recommendation for SD 3.5 Medium).

A job asks for it with `params.skip_layer_guidance_scale` (0: off), the MMDiT blocks to
skip (`skip_guidance_layers`, ComfyUI's default 7, 8, 9) and the part of the steps it
runs in (`skip_layer_guidance_start` / `_stop`, fractions of the schedule: 0.01 and 0.15,
ComfyUI's defaults; diffusers' rule: step i with steps x start < i < steps x stop). In those
steps the transformer runs once more on the positive rows with those blocks skipped, and
the guided prediction gets `scale x (cond - cond_skipped)` added (diffusers' formula).
It needs CFG (a CFG scale above 1), as in diffusers.

Here it is a forward hook on the transformer (`guided`), so txt2img, img2img, inpaint and
hires fix (diffusers' img2img and inpaint pipelines have no SLG) run it alike: the
pipeline's CFG combines (uncond, cond') with cond' = cond + (scale / cfg) x (cond -
cond_skipped), which is diffusers' result. The step comes from the step callback (img2img
and hires fix: the steps their strength runs, as fractions of those). The settings reach
the hook inside the pipeline call's `joint_attention_kwargs` (`call_kwargs`; the hook
takes them out before the transformer sees them).

Infotext: `Skip layer guidance: 3, Skip layer guidance layers: "7,8,9", Skip layer guidance
start: 0.01, Skip layer guidance stop: 0.15` (only when it is on).

This module must never import a UI library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

DEFAULT_LAYERS = (7, 8, 9)  # ComfyUI's SkipLayerGuidanceSD3
DEFAULT_SCALE, DEFAULT_START, DEFAULT_STOP = 3.0, 0.01, 0.15  # its scale (UI), start, end
_KEY = "webui_skip_layer_guidance"  # in joint_attention_kwargs, taken out by the hook
INFOTEXT_FIELDS = {  # infotext key -> params field
    "Skip layer guidance": "skip_layer_guidance_scale",
    "Skip layer guidance layers": "skip_guidance_layers",
    "Skip layer guidance start": "skip_layer_guidance_start",
    "Skip layer guidance stop": "skip_layer_guidance_stop",
}


@dataclass(frozen=True)
class SkipLayerGuidance:
    scale: float
    layers: tuple[int, ...]
    start: float
    stop: float
    cfg_scale: float

    def runs_at(self, step: int, steps: int) -> bool:
        return steps * self.start < step < steps * self.stop


class LayersError(ValueError):
    """A layer list that cannot be read."""


def parse_layers(value: Any) -> tuple[int, ...]:
    """ "7, 8, 9", "7,8,9", [7, 8, 9] -> (7, 8, 9); 7 (an infotext's one block) -> (7,);
    `LayersError` for anything else."""
    if _is_block(value) and not isinstance(value, str):
        value = [value]
    items = value.replace(",", " ").split() if isinstance(value, str) else value
    try:
        layers = tuple(items)
    except TypeError:
        raise LayersError(f"must be a list of block numbers, got {value!r}") from None
    if not all(_is_block(x) for x in layers):
        raise LayersError(f"must be block numbers (0, 1, ...), got {value!r}")
    return tuple(int(x) for x in layers)


def _is_block(item: Any) -> bool:
    if isinstance(item, str):
        return item.isdigit()
    return isinstance(item, int) and not isinstance(item, bool) and item >= 0


def check(params: Any) -> tuple[str, str] | None:
    """What is wrong with a job's SLG fields: (field, message), or None."""
    scale = params.skip_layer_guidance_scale
    if not _number(scale) or not 0 <= scale <= 30:
        return "skip_layer_guidance_scale", f"must be between 0 and 30, got {scale!r}"
    try:
        layers = parse_layers(params.skip_guidance_layers)
    except LayersError as exc:
        return "skip_guidance_layers", str(exc)
    if scale > 0 and not layers:
        return "skip_guidance_layers", "name at least one block to skip"
    start, stop = params.skip_layer_guidance_start, params.skip_layer_guidance_stop
    for name, value in (("skip_layer_guidance_start", start), ("skip_layer_guidance_stop", stop)):
        if not _number(value) or not 0 <= value <= 1:
            return name, f"must be a fraction of the steps between 0 and 1, got {value!r}"
    if start > stop:
        return "skip_layer_guidance_stop", f"must not be below the start ({start}), got {stop}"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def requested(params: Any) -> bool:
    return getattr(params, "skip_layer_guidance_scale", 0) > 0


def not_for_message(what: str) -> str:
    """Why SLG is refused for `what` (a checkpoint that is not SD 3.5)."""
    return f"Skip layer guidance is for SD 3.5 models; {what} is not one (set its scale to 0)"


def infotext_fields(params: Any) -> dict[str, Any]:
    if not requested(params):
        return {}
    layers = ",".join(str(n) for n in parse_layers(params.skip_guidance_layers))
    return {"Skip layer guidance": params.skip_layer_guidance_scale,
            "Skip layer guidance layers": layers,
            "Skip layer guidance start": params.skip_layer_guidance_start,
            "Skip layer guidance stop": params.skip_layer_guidance_stop}  # fmt: skip


def call_kwargs(params: Any) -> dict[str, Any]:
    """The pipeline call's keyword argument that carries the job's SLG to `guided`
    ({} when it is off or there is no CFG)."""
    if not requested(params) or params.cfg_scale <= 1:
        return {}
    slg = SkipLayerGuidance(
        float(params.skip_layer_guidance_scale), parse_layers(params.skip_guidance_layers),
        float(params.skip_layer_guidance_start), float(params.skip_layer_guidance_stop),
        float(params.cfg_scale),
    )  # fmt: skip
    return {"joint_attention_kwargs": {_KEY: slg}}


@contextmanager
def guided(pipe: Any) -> Iterator[Callable[[Callable], Callable]]:
    """Around one pipeline call: SLG on the transformer when the call carries it. Yields a
    wrapper for the step callback, which tells the hook the step and the pipeline (step 0
    never gets SLG: diffusers' window starts after it)."""
    transformer = pipe.transformer
    state: dict[str, Any] = {"slg": None, "inner": False, "pipe": None, "step": 0}

    def take(module, args, kwargs):
        extra = kwargs.get("joint_attention_kwargs")
        if state["inner"] or not extra or _KEY not in extra:
            return None
        extra = dict(extra)
        state["slg"] = extra.pop(_KEY)
        _check_layers(state["slg"], module.config.num_layers)
        return args, {**kwargs, "joint_attention_kwargs": extra or None}

    def add(module, args, kwargs, output):
        slg, state["slg"] = state["slg"], None
        if slg is None or state["inner"] or state["pipe"] is None:
            return None
        rows = kwargs["hidden_states"].shape[0]
        if rows % 2 or not slg.runs_at(state["step"], _steps_of(state["pipe"].scheduler)):
            return None
        return _with_skipped(module, kwargs, output, slg, state)

    def track(callback: Callable) -> Callable:
        def tracked(p, i, t, tensors):
            state["pipe"], state["step"] = p, i + 1
            if state["step"] >= _steps_of(p.scheduler):  # the call's last step: a next call
                state["pipe"], state["step"] = None, 0  # (another batch) starts afresh
            return callback(p, i, t, tensors)

        return tracked

    handles = (transformer.register_forward_pre_hook(take, with_kwargs=True),
               transformer.register_forward_hook(add, with_kwargs=True))  # fmt: skip
    try:
        yield track
    finally:
        for handle in handles:
            handle.remove()


def _check_layers(slg: SkipLayerGuidance, blocks: int) -> None:
    wrong = [n for n in slg.layers if n >= blocks]
    if wrong:
        raise UserError(f"Skip layer guidance: this model has blocks 0-{blocks - 1}; "
                        f"asked to skip {', '.join(map(str, wrong))}")  # fmt: skip


def _steps_of(scheduler: Any) -> int:
    """The steps the pipeline call runs (img2img: those after its strength's start)."""
    return len(scheduler.timesteps) - (getattr(scheduler, "begin_index", None) or 0)


def _with_skipped(module, kwargs, output, slg: SkipLayerGuidance, state) -> Any:
    """The output with the positive rows moved so that CFG adds scale x (cond - skipped).
    (Tensor methods only: the services and the UI import this module, never torch.)"""
    half = kwargs["hidden_states"].shape[0] // 2
    inputs = {name: kwargs[name][half:] for name in
              ("hidden_states", "timestep", "encoder_hidden_states", "pooled_projections")}  # fmt: skip
    state["inner"] = True
    try:
        skipped = module(**inputs, joint_attention_kwargs=kwargs.get("joint_attention_kwargs"),
                         return_dict=False, skip_layers=list(slg.layers))[0]  # fmt: skip
    finally:
        state["inner"] = False
    sample = output[0] if isinstance(output, tuple) else output.sample
    guided_sample = sample.clone()  # (uncond, cond) rows: cond + (cond - skipped) x scale / cfg
    guided_sample[half:] += (sample[half:] - skipped) * (slg.scale / slg.cfg_scale)
    if isinstance(output, tuple):
        return (guided_sample, *output[1:])
    output.sample = guided_sample
    return output
