"""FLUX ControlNet units in the worker: their hints as FLUX reads them, their residuals
added to the transformer's blocks at each call of our own FLUX pipelines.

The units are prepared as every unit is (`core/controlnet.py:prepare_control`: map,
model from `model_manager/flux_controlnet.py`); `flux_controlled` wraps one pipeline call
(`FluxFamily.follow_steps`, around the prompt schedule of `core/flux_text.py`, whose
forward pre-hook runs first, so the units read the step's prompt). At every transformer
call, as diffusers' `FluxControlNetPipeline` / `FluxMultiControlNetModel` do:

- the hint is the unit's map fit to the pass's size, in [-1, 1]; InstantX / Shakker-Labs
  models get it encoded by the checkpoint's FLUX autoencoder (shifted, scaled, packed
  2x2: `latents.vae_encode_pixels`), XLabs' models (a hint block) the pixels; once per
  size (the hires. fix pass gets its own);
- each guiding unit's `FluxControlNetModel` runs on the call's packed latents, timestep,
  text and pooled embeddings, ids and distilled guidance, with `conditioning_scale` = the
  unit's weight and, for a union model, the control mode of its control type
  (`union_mode`: InstantX's and Shakker-Labs' canny 0, tile 1, depth 2, blur 3, pose 4,
  gray 5, low quality 6);
- the units' block residuals are spread over the transformer's blocks as diffusers does
  (InstantX: block i gets residual i // ceil(blocks / residuals); XLabs: residual
  i % residuals, `controlnet_blocks_repeat`) and summed, then passed as
  `controlnet_block_samples` / `controlnet_single_block_samples`.

As for SD units (sd-webui-controlnet's rules): a unit guides the steps whose step/steps
lies in [guidance_start, guidance_end]; weight 0 is no unit; "ControlNet is more
important" leaves the negative prompt's call (true CFG, CFG > 1) without the residuals;
"My prompt is more important" has no FLUX meaning (the soft weights are per UNet
resolution level) and is refused; FLUX.1 Fill gives the model the noisy latents' 64
features of its wider input. XLabs' FLUX IP-Adapter units feed the double blocks
(`core/flux_ip_adapter.py`); T2I-Adapter, SD IP-Adapter and inpaint units are refused.
SD 3.5's units (`core/sd3_controlnet.py`) share the step rules (`ControlSteps`), the hint's
pixels and the residual sums.

This module must never import a UI library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .controlnet import JobControl, PreparedUnit
from .flux_ip_adapter import call_kwargs as ip_call_kwargs
from .flux_ip_adapter import installed as ip_installed

UNION_MODES = {"canny": 0, "tile": 1, "depth": 2, "blur": 3, "pose": 4, "gray": 5, "lq": 6}
# sd-webui-controlnet's `union_control_type` values that a FLUX union model serves
_UNION_TYPES = {"canny": 0, "hard edge": 0, "soft edge": 0, "tile": 1, "depth": 2, "openpose": 4}
# preprocessor names (their start) -> the union mode of their control type
_MODULE_MODES = (("canny", 0), ("lineart", 0), ("mlsd", 0), ("scribble", 0), ("softedge", 0),
                 ("invert", 0), ("threshold", 0), ("binary", 0), ("tile", 1), ("depth", 2),
                 ("blur", 3), ("openpose", 4), ("dw_openpose", 4), ("recolor", 5))  # fmt: skip
SOFT_MODE = "My prompt is more important"
COND_ONLY = "ControlNet is more important"


def union_mode(part: PreparedUnit) -> int:
    """The union control mode of a unit: its `union_control_type` (the extension's field,
    when the unit has it) or its preprocessor's control type."""
    unit = part.unit
    kind = str(getattr(unit, "union_control_type", "") or "").lower()
    if kind in _UNION_TYPES:
        return _UNION_TYPES[kind]
    for start, mode in _MODULE_MODES:
        if unit.module.startswith(start):
            return mode
    raise UserError(f"ControlNet unit {part.index}: {unit.model_label} is a FLUX union "
                    "ControlNet: choose a preprocessor of a control type it serves (canny, "
                    "tile, depth, blur, openpose) so that its mode is known")  # fmt: skip


def check_units(control: JobControl) -> None:
    """A UserError naming the first unit FLUX cannot run."""
    for part in control.units:
        unit, n = part.unit, part.index
        if part.region is not None or (part.ip is not None and part.ip.region is not None):
            raise UserError(f"ControlNet unit {n}: effective_region_mask: FLUX ControlNets and "
                            "IP-Adapters have no region mask (nor in the extension or Forge)")  # fmt: skip
        if part.ip is not None and not getattr(part.ip.model, "flux", False):
            raise UserError(f"ControlNet unit {n}: {unit.model_label} is an SD IP-Adapter; "
                            "FLUX.1 takes XLabs' FLUX IP-Adapter")  # fmt: skip
        if part.model is None:
            continue
        if not hasattr(part.model, "controlnet_x_embedder"):
            raise UserError(f"ControlNet unit {n}: {unit.model_label} is not a FLUX ControlNet")
        if unit.control_mode == SOFT_MODE:
            raise UserError(f"ControlNet unit {n}: control mode {SOFT_MODE!r} has no meaning "
                            "for FLUX ControlNets: choose Balanced or "
                            f"{COND_ONLY!r}")  # fmt: skip
        if part.detected.shape[2] == 4:
            raise UserError(f"ControlNet unit {n}: {unit.module} (an inpaint hint) does not "
                            "run with FLUX ControlNets")  # fmt: skip
        if part.model.union:
            union_mode(part)


def hint_pixels(part: PreparedUnit, height: int, width: int) -> torch.Tensor:
    """The unit's map fit to the pass's size, (1, 3, H, W) in [-1, 1]."""
    hint = np.ascontiguousarray(part.hint(height, width)[:, :, :3])
    return torch.from_numpy(hint).float().div(127.5).sub(1.0).permute(2, 0, 1)[None]


@torch.no_grad()
def hint_condition(part: PreparedUnit, pipe: Any, height: int, width: int) -> torch.Tensor:
    """The unit's hint as its model reads it (1, tokens, 64) or XLabs' pixels (1, 3, H, W)."""
    from .latents import vae_encode_pixels

    if (height, width) not in part.features:
        pixels = hint_pixels(part, height, width)
        if part.model.input_hint_block is not None:  # XLabs: the hint block reads pixels
            cond = pixels
        else:  # InstantX / Shakker-Labs: the FLUX autoencoder's packed latents
            latents = vae_encode_pixels(pipe, pixels)
            cond = pipe._pack_latents(latents, *latents.shape)
        part.features[(height, width)] = [cond]
    return part.features[(height, width)][0]


def _per_block(samples: Any, count: int, repeat: bool) -> list[torch.Tensor | None]:
    """A model's residuals spread over `count` blocks, as FluxTransformer2DModel adds them."""
    if not samples or not count:
        return [None] * count
    if repeat:
        return [samples[i % len(samples)] for i in range(count)]
    interval = math.ceil(count / len(samples))
    return [samples[i // interval] for i in range(count)]


def _summed(total: list, new: list) -> list:
    return [b if a is None else a if b is None else a + b for a, b in zip(total, new, strict=True)]


def _filled(samples: list, like: torch.Tensor) -> list[torch.Tensor] | None:
    """The summed residuals in the call's dtype (blocks no unit reached get zeros)."""
    if all(s is None for s in samples):
        return None
    template = next(s for s in samples if s is not None)
    zeros = torch.zeros_like(template)
    return [(zeros if s is None else s).to(like.dtype) for s in samples]


class ControlSteps:
    """One pipeline call's step and call counters (the transformer ControlNets' units guide
    the steps whose step/steps lies in [guidance_start, guidance_end])."""

    def __init__(self, control: JobControl, pipe: Any, size: tuple[int, int], first_step: int):
        self.control, self.pipe, self.size = control, pipe, size
        self.first_step, self.step, self.call = first_step, first_step, 0
        self.steps = 0  # the calling pipeline's steps (img2img and hires. fix run a view of it)

    def fraction(self) -> float:
        return self.step / max(self.steps, 1)

    def guides(self, part: PreparedUnit) -> bool:
        unit = part.unit
        return unit.weight > 0 and unit.guidance_start <= self.fraction() <= unit.guidance_end

    def wrap(self, callback: Callable | None) -> Callable:
        def on_step_end(pipe, i, t, tensors):
            self.step, self.call = self.first_step + i + 1, 0
            self.steps = int(getattr(pipe, "num_timesteps", 0) or 0)
            return callback(pipe, i, t, tensors) if callback else {}

        return on_step_end


class _FluxControlState(ControlSteps):
    """ControlSteps and the FLUX transformer's pre-hook."""

    def __init__(self, control: JobControl, pipe: Any, size: tuple[int, int], first_step: int):
        super().__init__(control, pipe, size, first_step)
        self.ip_processors: list[Any] = []  # set while the IP-Adapter processors are on

    def pre_hook(self, transformer: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        negative = self.call > 0  # the pipeline's second call of a step: the negative prompt
        self.call += 1
        if self.ip_processors:  # FLUX IP-Adapter units: their image tokens for this call
            kwargs["joint_attention_kwargs"] = ip_call_kwargs(
                self.control.ip_units, self.ip_processors, kwargs, negative, self.fraction()
            )
        found = self.residuals(transformer, kwargs, negative)
        if found is not None:
            kwargs["controlnet_block_samples"], kwargs["controlnet_single_block_samples"] = found
            kwargs["controlnet_blocks_repeat"] = False  # spread per block here
        return args, kwargs

    def residuals(self, transformer: Any, kwargs: dict, negative: bool) -> tuple | None:
        doubles: list = [None] * len(transformer.transformer_blocks)
        singles: list = [None] * len(transformer.single_transformer_blocks)
        guided = False
        for part in self.control.controlnets:
            if not self.guides(part):
                continue
            if negative and part.unit.control_mode == COND_ONLY:
                continue
            double, single = self._run(part, kwargs)
            repeat = part.model.input_hint_block is not None  # XLabs' few blocks, repeated
            doubles = _summed(doubles, _per_block(double, len(doubles), repeat))
            singles = _summed(singles, _per_block(single, len(singles), False))
            guided = True
        if not guided:
            return None
        like = kwargs["hidden_states"]
        return _filled(doubles, like), _filled(singles, like)

    def _run(self, part: PreparedUnit, kwargs: dict) -> tuple[Any, Any]:
        model, hidden = part.model, kwargs["hidden_states"]
        rows, dtype = hidden.shape[0], model.dtype
        cond = hint_condition(part, self.pipe, *self.size).to(hidden.device, dtype)
        cond = cond.expand(rows, *cond.shape[1:])
        mode = None
        if model.union:
            mode = torch.full((rows, 1), union_mode(part), dtype=torch.long, device=hidden.device)
        guidance = None
        if model.config.guidance_embeds:
            guidance = kwargs.get("guidance")
            if guidance is None:  # schnell: the job's distilled CFG, as diffusers gives it
                guidance = torch.full((rows,), float(self.pipe.guidance_scale))
            guidance = guidance.to(hidden.device, dtype)
        return model(
            hidden_states=hidden[..., : model.config.in_channels].to(dtype),
            controlnet_cond=cond, controlnet_mode=mode, conditioning_scale=part.unit.weight,
            encoder_hidden_states=kwargs["encoder_hidden_states"].to(dtype),
            pooled_projections=kwargs["pooled_projections"].to(dtype),
            timestep=kwargs["timestep"].to(dtype), img_ids=kwargs["img_ids"],
            txt_ids=kwargs["txt_ids"], guidance=guidance, return_dict=False,
        )  # fmt: skip


@contextmanager
def flux_controlled(inner: AbstractContextManager, control: JobControl | None, pipe: Any,
                    size: tuple[int, int] | None, first_step: int = 0) -> Iterator[Callable]:  # fmt: skip
    """`inner` (the prompt schedule of one FLUX pipeline call) plus the job's ControlNet
    units; `size`: the pass's (height, width)."""
    if control is None or not control.units:
        with inner as wrap:
            yield wrap
        return
    check_units(control)
    if not control.guiding or size is None:
        with inner as wrap:
            yield wrap
        return
    state = _FluxControlState(control, pipe, size, first_step)
    with ip_installed(pipe.transformer, control.ip_units) as state.ip_processors, inner as wrap:
        handle = pipe.transformer.register_forward_pre_hook(state.pre_hook, with_kwargs=True)
        try:
            yield lambda callback: wrap(state.wrap(callback))
        finally:
            handle.remove()
