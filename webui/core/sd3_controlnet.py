"""SD 3.5 ControlNet units in the worker: their hints encoded by the checkpoint's
autoencoder, their residuals added to the transformer's blocks at each call of our own
SD 3.5 pipelines (txt2img, img2img, inpaint, hires. fix).

The units are prepared as every unit is (`core/controlnet.py:prepare_control`: map,
model from `model_manager/sd3_controlnet.py`); `sd3_controlled` wraps one pipeline call
(`SD3Family.follow_steps`, around the prompt schedule of `core/sd3_text.py`, whose pre-hook
runs first, so the units read the step's prompt). At every transformer call, as diffusers'
`StableDiffusion3ControlNetPipeline` / `SD3MultiControlNetModel` do:

- the hint is the unit's map fit to the pass's size, in [-1, 1], encoded by the
  checkpoint's autoencoder and scaled (Stability's models: shifted too; InstantX's, whose
  config forces zero pooled text, not shifted); once per size;
- each guiding unit's `SD3ControlNetModel` runs on the call's latents and timestep, the
  prompt's text (models with a text embedder: InstantX's) and pooled text (zeros for
  InstantX's), with `conditioning_scale` = the unit's weight;
- the units' residuals are spread over the transformer's blocks as the transformer spreads
  one model's (block i gets residual int(i / (blocks / residuals))) and summed.

The step rules are FLUX's (`flux_controlnet.ControlSteps`, sd-webui-controlnet's): a unit
guides the steps whose step/steps lies in [guidance_start, guidance_end]; weight 0 is no
unit; "ControlNet is more important" leaves the negative prompt's rows (CFG batches them
first) without the residuals; "My prompt is more important" (per UNet level) is refused,
as are IP-Adapter, T2I-Adapter and inpaint units.

This module must never import a UI library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch

from ..errors import UserError
from .controlnet import JobControl, PreparedUnit
from .flux_controlnet import COND_ONLY, SOFT_MODE, ControlSteps, _filled, _summed, hint_pixels


def check_units(control: JobControl) -> None:
    """A UserError naming the first unit SD 3.5 cannot run."""
    for part in control.units:
        unit, n = part.unit, part.index
        if part.ip is not None:
            raise UserError(f"ControlNet unit {n}: {unit.model_label} is an IP-Adapter; "
                            "SD 3.5 takes SD 3.5 ControlNets only")  # fmt: skip
        if part.region is not None:
            raise UserError(f"ControlNet unit {n}: effective_region_mask: SD 3.5 ControlNets "
                            "have no region mask (nor in the extension or Forge)")  # fmt: skip
        if part.model is None:
            continue
        if not hasattr(part.model, "pos_embed_input"):
            raise UserError(f"ControlNet unit {n}: {unit.model_label} is not an SD 3.5 "
                            "ControlNet")  # fmt: skip
        if unit.control_mode == SOFT_MODE:
            raise UserError(f"ControlNet unit {n}: control mode {SOFT_MODE!r} has no meaning "
                            f"for SD 3.5 ControlNets: choose Balanced or {COND_ONLY!r}")  # fmt: skip
        if part.detected.shape[2] == 4:
            raise UserError(f"ControlNet unit {n}: {unit.module} (an inpaint hint) does not "
                            "run with SD 3.5 ControlNets")  # fmt: skip


@torch.no_grad()
def hint_latents(part: PreparedUnit, pipe: Any, height: int, width: int) -> torch.Tensor:
    """The unit's hint as its model reads it: the autoencoder's scaled latents (1, 16, h, w)."""
    from .latents import vae_encode_pixels

    if (height, width) not in part.features:
        latents = vae_encode_pixels(pipe, hint_pixels(part, height, width))
        if part.model.config.force_zeros_for_pooled_projection:  # InstantX's: no shift
            config = pipe.vae.config
            latents = latents + (config.shift_factor or 0.0) * config.scaling_factor
        part.features[(height, width)] = [latents]
    return part.features[(height, width)][0]


def per_block(samples: Any, count: int) -> list[torch.Tensor]:
    """A model's residuals spread over `count` blocks, as SD3Transformer2DModel adds them."""
    interval = count / len(samples)
    return [samples[int(i / interval)] for i in range(count)]


class _SD3ControlState(ControlSteps):
    """ControlSteps and the SD 3 transformer's pre-hook."""

    def __init__(self, control: JobControl, pipe: Any, size: tuple[int, int], first_step: int,
                 batch_size: int):  # fmt: skip
        super().__init__(control, pipe, size, first_step)
        self.batch_size = batch_size

    def pre_hook(self, transformer: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        blocks: list = [None] * len(transformer.transformer_blocks)
        for part in self.control.controlnets:
            if self.guides(part):
                blocks = _summed(blocks, per_block(self._run(part, kwargs), len(blocks)))
        found = _filled(blocks, kwargs["hidden_states"])
        if found is not None:  # Skip Layer Guidance's call too: it differs by its layers only
            kwargs["block_controlnet_hidden_states"] = found
        return args, kwargs

    def _run(self, part: PreparedUnit, kwargs: dict) -> list[torch.Tensor]:
        model, hidden = part.model, kwargs["hidden_states"]
        rows, dtype, config = hidden.shape[0], model.dtype, part.model.config
        cond = hint_latents(part, self.pipe, *self.size).to(hidden.device, dtype)
        pooled = kwargs["pooled_projections"].to(dtype)
        if config.force_zeros_for_pooled_projection:
            pooled = torch.zeros_like(pooled)
        text = kwargs["encoder_hidden_states"].to(dtype) if config.joint_attention_dim else None
        (samples,) = model(
            hidden_states=hidden.to(dtype), controlnet_cond=cond.expand(rows, *cond.shape[1:]),
            conditioning_scale=part.unit.weight, encoder_hidden_states=text,
            pooled_projections=pooled, timestep=kwargs["timestep"].to(dtype), return_dict=False,
        )  # fmt: skip
        if part.unit.control_mode == COND_ONLY and rows > self.batch_size:  # CFG: negative first
            keep = torch.ones(rows, 1, 1, device=hidden.device, dtype=dtype)
            keep[: rows - self.batch_size] = 0
            samples = [sample * keep for sample in samples]
        return samples


@contextmanager
def sd3_controlled(inner: AbstractContextManager, control: JobControl | None, pipe: Any,
                   size: tuple[int, int] | None, batch_size: int,
                   first_step: int = 0) -> Iterator[Callable]:  # fmt: skip
    """`inner` (the prompt schedule of one SD 3.5 pipeline call) plus the job's ControlNet
    units; `size`: the pass's (height, width)."""
    if control is not None and control.units:
        check_units(control)
    if control is None or not control.guiding or size is None:
        with inner as wrap:
            yield wrap
        return
    state = _SD3ControlState(control, pipe, size, first_step, batch_size)
    with inner as wrap:
        handle = pipe.transformer.register_forward_pre_hook(state.pre_hook, with_kwargs=True)
        try:
            yield lambda callback: wrap(state.wrap(callback))
        finally:
            handle.remove()
