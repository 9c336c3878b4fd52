"""Scheduled prompts and composable diffusion (AND) inside a diffusers pipeline call.

Diffusers pipelines condition every step on one prompt and compute classifier-free
guidance as `uncond + g * (cond - uncond)` on a batch of [negative, positive]. To switch
prompts at the right step and to combine AND sub-prompts, a forward pre-hook on the UNet
rebuilds that batch for the current step: [negative, sub-prompt 1, ..., sub-prompt n],
each with its own embeddings (and SDXL pooled embeddings), and a forward hook folds the
n noise predictions back into one: `uncond + sum_i w_i * (cond_i - uncond)`. The pipeline's
own guidance then gives A1111's composable diffusion,
`uncond + g * sum_i w_i * (cond_i - uncond)`. A step callback moves the hook to the next
step, so second-order samplers (two UNet calls per step) stay on the same step.

CFG scale 1 (diffusers' pipelines send no negative rows at a guidance scale of 1 or less)
runs one row per image and sub-prompt: the negative prompt is not used, and AND
sub-prompts are averaged by their weights (Forge's rule at CFG 1; A1111's formula, the
same when the weights sum to 1, would need the unconditional pass for any other sum).

Negative guidance minimum sigma (A1111's NGMS, `s_min_uncond`): when the sigma of a UNet
call is below it, that call skips the unconditional rows (every other call, as A1111; every
call with "all steps") and uses the first sub-prompt's prediction in their place, so the
pipeline's guidance gives the conditional prediction alone. The sigma of a call is read
from its timestep on the model's noise schedule (`sigma_of`).

The hooks live only for one pipeline call (`hooked`), and only when the conditioning is
not static or NGMS is on; a plain prompt runs the pipeline untouched.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager

import torch

from .conditioning import Conditioning
from .sampler_params import NGMS_OFF, Ngms
from .samplers import steps_done

SigmaOf = Callable[[float], float]  # timestep -> sigma on the model's noise schedule

log = logging.getLogger(__name__)


class _StepConditioner:
    def __init__(
        self,
        conditioning: Conditioning,
        batch_size: int,
        ngms: Ngms,
        sigma_of: SigmaOf | None,
        first_step: int = 0,
    ):
        self.cond = conditioning
        self.batch = batch_size
        self.first_step = first_step  # a pipeline call that continues a run (the refiner)
        self.step = first_step
        self.ngms, self.sigma_of = ngms, sigma_of
        self.calls = 0  # UNet calls so far (A1111's denoiser step counter)
        self.skipped = 0  # calls that skipped the unconditional pass
        self._layout: tuple[bool, bool, bool, bool] | None = None  # guided, uncond, combine, skip
        # CFG 1 (no guided batch) with AND: Forge's rule, the weighted mean of the
        # sub-prompts without an unconditional pass (A1111's formula needs it only when the
        # weights do not sum to 1; with a sum of 0 or less it is kept)
        self._cfg1_average = sum(conditioning.weights) > 0

    def _skip_uncond(self, args, kwargs) -> bool:
        """NGMS: whether this call leaves out the unconditional rows."""
        ngms = self.ngms
        if ngms.min_sigma <= 0 or self.sigma_of is None:
            return False
        if not (ngms.all_steps or self.calls % 2):
            return False
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
        return self.sigma_of(t) < ngms.min_sigma

    def before(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        rows, b = sample.shape[0], self.batch
        if rows not in (b, 2 * b):
            raise RuntimeError(f"UNet batch of {rows} rows for {b} images: cannot condition it")
        guided = rows == 2 * b
        n = len(self.cond.conds)
        combine = n > 1 or self.cond.weights[0] != 1.0
        uncond = self.cond.uncond.at(self.step)
        conds = [c.at(self.step) for c in self.cond.conds]
        skip = guided and self._skip_uncond(args, kwargs)
        with_uncond = (guided or (combine and not self._cfg1_average)) and not skip

        def rebuild(tensor):
            """[uncond rows, cond rows] -> [uncond rows, cond rows x n]."""
            if not torch.is_tensor(tensor) or tensor.ndim == 0 or tensor.shape[0] != rows:
                return tensor
            first, second = (tensor[:b], tensor[b:]) if guided else (tensor, tensor)
            parts = ([first] if with_uncond else []) + [second] * n
            return torch.cat(parts)

        ehs = kwargs["encoder_hidden_states"]
        context = ([uncond] if with_uncond else []) + conds
        kwargs["encoder_hidden_states"] = torch.cat(
            [e.embeds.to(ehs.device, ehs.dtype).expand(b, -1, -1) for e in context]
        )
        added = kwargs.get("added_cond_kwargs")
        if added and "text_embeds" in added:
            pooled = added["text_embeds"]
            added = {key: rebuild(value) for key, value in added.items()}
            added["text_embeds"] = torch.cat(
                [e.pooled.to(pooled.device, pooled.dtype).expand(b, -1) for e in context]
            )
            kwargs["added_cond_kwargs"] = added
        for key in ("timestep_cond",):
            if key in kwargs:
                kwargs[key] = rebuild(kwargs[key])
        if args:
            args = (rebuild(args[0]), *(rebuild(a) for a in args[1:]))
        else:
            kwargs["sample"] = rebuild(kwargs["sample"])
        if "timestep" in kwargs:
            kwargs["timestep"] = rebuild(kwargs["timestep"])
        self._layout = (guided, with_uncond, combine, skip)
        return args, kwargs

    def after(self, module, args, kwargs, output):
        guided, with_uncond, combine, skip = self._layout
        self.calls += 1
        self.skipped += skip
        b = self.batch
        sample = output[0] if isinstance(output, tuple) else output.sample
        uncond = sample[:b] if with_uncond else None
        preds = sample[b:] if with_uncond else sample
        if skip:  # A1111: the first sub-prompt's prediction stands in for the uncond one
            uncond = preds[:b]
        if combine and uncond is None:  # CFG 1: the weighted mean of the sub-prompts
            total = sum(self.cond.weights)
            merged = sum(w / total * preds[i * b : (i + 1) * b]
                         for i, w in enumerate(self.cond.weights))  # fmt: skip
        elif combine:
            merged = uncond.clone()
            for i, weight in enumerate(self.cond.weights):
                merged += weight * (preds[i * b : (i + 1) * b] - uncond)
        else:
            merged = preds
        result = torch.cat([uncond, merged]) if guided else merged
        if isinstance(output, tuple):
            return (result, *output[1:])
        return type(output)(sample=result)

    def on_step_end(self, done: int) -> None:
        self.step = self.first_step + done


@contextmanager
def hooked(
    unet: torch.nn.Module,
    conditioning: Conditioning,
    batch_size: int,
    ngms: Ngms = NGMS_OFF,
    sigma_of: SigmaOf | None = None,
    *,
    first_step: int = 0,
):
    """Condition every UNet call of one pipeline call on the current step's prompts, and
    skip the unconditional pass below NGMS's sigma (`sigma_of` reads a call's sigma).
    `first_step`: the step a call that continues a run (the refiner's) starts at.

    Yields a function that wraps the pipeline's `callback_on_step_end`, so that the
    conditioning moves on after every step. A static conditioning without NGMS installs
    nothing.
    """
    if conditioning.static and ngms.min_sigma <= 0:
        yield lambda callback: callback
        return
    state = _StepConditioner(conditioning, batch_size, ngms, sigma_of, first_step)
    handles = [
        unet.register_forward_pre_hook(state.before, with_kwargs=True),
        unet.register_forward_hook(state.after, with_kwargs=True),
    ]

    def wrap(callback):
        def on_step_end(pipe, i, t, tensors):
            state.on_step_end(steps_done(pipe, i))  # Heun, DPM2: two UNet calls a step
            return callback(pipe, i, t, tensors) if callback else {}

        return on_step_end

    try:
        yield wrap
    finally:
        for handle in handles:
            handle.remove()


def sigma_of_timestep(alphas_cumprod: torch.Tensor) -> SigmaOf:
    """The sigma of a (fractional) timestep on a model's noise schedule: log-sigma
    interpolated between the integer timesteps, as diffusers maps sigmas to timesteps."""
    alphas = alphas_cumprod.double().cpu()
    log_sigmas = (((1 - alphas) / alphas) ** 0.5).log()
    last = len(log_sigmas) - 1

    def sigma_of(t: float) -> float:
        t = min(max(t, 0.0), float(last))
        low = int(t)
        high = min(low + 1, last)
        w = t - low
        return float(((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp())

    return sigma_of
