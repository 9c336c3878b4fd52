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

The hooks live only for one pipeline call (`hooked`), and only when the conditioning is
not static; a plain prompt runs the pipeline untouched.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch

from .conditioning import Conditioning

log = logging.getLogger(__name__)


class _StepConditioner:
    def __init__(self, conditioning: Conditioning, batch_size: int):
        self.cond = conditioning
        self.batch = batch_size
        self.step = 0
        self._layout: tuple[bool, bool, bool] | None = None  # guided, with uncond, combine

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
        with_uncond = guided or combine

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
        self._layout = (guided, with_uncond, combine)
        return args, kwargs

    def after(self, module, args, kwargs, output):
        guided, with_uncond, combine = self._layout
        b = self.batch
        sample = output[0] if isinstance(output, tuple) else output.sample
        uncond = sample[:b] if with_uncond else None
        preds = sample[b:] if with_uncond else sample
        if combine:
            merged = uncond.clone()
            for i, weight in enumerate(self.cond.weights):
                merged += weight * (preds[i * b : (i + 1) * b] - uncond)
        else:
            merged = preds
        result = torch.cat([uncond, merged]) if guided else merged
        if isinstance(output, tuple):
            return (result, *output[1:])
        return type(output)(sample=result)

    def on_step_end(self, i: int) -> None:
        self.step = i + 1


@contextmanager
def hooked(unet: torch.nn.Module, conditioning: Conditioning, batch_size: int):
    """Condition every UNet call of one pipeline call on the current step's prompts.

    Yields a function that wraps the pipeline's `callback_on_step_end`, so that the
    conditioning moves on after every step. A static conditioning installs nothing.
    """
    if conditioning.static:
        yield lambda callback: callback
        return
    state = _StepConditioner(conditioning, batch_size)
    handles = [
        unet.register_forward_pre_hook(state.before, with_kwargs=True),
        unet.register_forward_hook(state.after, with_kwargs=True),
    ]

    def wrap(callback):
        def on_step_end(pipe, i, t, tensors):
            state.on_step_end(i)
            return callback(pipe, i, t, tensors) if callback else {}

        return on_step_end

    try:
        yield wrap
    finally:
        for handle in handles:
            handle.remove()
