"""A1111's Refiner: another checkpoint takes over the sampling at "Switch at".

txt2img (`webui.core.processing`) and img2img without a mask (`webui.core.img2img`,
counting the steps its denoising strength runs) use it the same way. The main checkpoint
samples the first `ceil(run_steps * switch_at)` steps (A1111 switches at the first step
whose completed ratio reaches `refiner_switch_at`); its pipeline call
stops there (`RefinerRun.stopping`, the step callback sets the pipeline's interrupt
flag, so diffusers skips the remaining steps), and `RefinerRun.finish` continues the same
sampler run with the refiner from those latents: the refiner's img2img pipeline view gets
a copy of the main pass's scheduler in its state at the switch (timesteps, step index,
the multistep history), whose `set_timesteps` and `set_begin_index` do nothing, and its
`prepare_latents` returns the latents as they are (no new noise is drawn, so the
per-image generators go on with the step noise of ancestral and SDE samplers as in one
run). Progress, previews and prompt schedules count on from the switch step. The flow
pipelines (FLUX.1, SD 3.5, Z-Image) are given the latents as their `latents` (FLUX's
packed again) and the scheduler's remaining timesteps from its step index: the main
pass's sigmas, with its model's shift, go on in the refiner.

The refiner must share the main checkpoint's latent space and prediction type
(`webui.core.checkpoints.check_compatible`): SDXL base with the SDXL refiner or another
SDXL model, SD 1.x with SD 1.x or 2.x (epsilon) models, FLUX.1 with FLUX.1 or Z-Image
(the same autoencoder), SD 3.5 with SD 3.5; FLUX.1 Fill takes no part (it reads a mask).
It is leased through the job's
`JobCheckpoints` (the model manager's cache rules) at its first switch, with the prompt
encoded by its own text encoders (an SDXL refiner: OpenCLIP bigG alone, plus the
aesthetic scores of the options `sdxl_refiner_high/low_aesthetic_score`). The job's
LoRAs and VAE stay on the main checkpoint; images are decoded by the main one's VAE.
A switch at 1.0 never switches (the same image as without a refiner, as in A1111).

This module must never import a UI library or change global options.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .checkpoints import check_compatible
from .conditioning import Conditioning
from .params import Txt2ImgParams
from .run import RunContext
from .sampler_params import Ngms, SamplerRun

FIELD = "refiner_checkpoint"


def switch_step(steps: int, switch_at: float) -> int:
    """The first step the refiner runs: A1111 switches when step / steps >= switch_at."""
    return min(steps, max(1, math.ceil(steps * switch_at - 1e-9)))


def refiner_fields(run: RunContext, params: Txt2ImgParams) -> dict[str, Any]:
    """A1111's infotext fields "Refiner" (name [hash]) and "Refiner switch at"."""
    if not params.refiner_checkpoint or run.checkpoints is None:
        return {}
    info = run.checkpoints.info(params.refiner_checkpoint)
    name = f"{info.name} [{info.shorthash}]" if info.shorthash else info.name
    return {"Refiner": name, "Refiner switch at": params.refiner_switch_at}


def aesthetic_kwargs(pipe: Any, scores: tuple[float, float]) -> dict[str, float]:
    """The SDXL img2img pipelines' aesthetic scores (prompt, negative), where it takes them."""
    names = inspect.signature(pipe.__call__).parameters
    if "aesthetic_score" not in names:
        return {}
    return {"aesthetic_score": scores[0], "negative_aesthetic_score": scores[1]}


@dataclass
class RefinerRun:
    """The refiner of one txt2img job (None from `of` when it never switches)."""

    run: RunContext
    params: Txt2ImgParams
    first_step: int  # counted from the first step the main pass runs
    run_steps: int  # the steps the main pass runs (img2img: steps x denoising strength)
    _model: tuple[Any, Any] | None = field(default=None, repr=False)
    _conditioning: Conditioning | None = field(default=None, repr=False)

    @classmethod
    def of(
        cls, run: RunContext, params: Txt2ImgParams, run_steps: int | None = None
    ) -> RefinerRun | None:
        """`run_steps`: the steps the main pass runs (None: all of `params.steps`)."""
        if not params.refiner_checkpoint or run.checkpoints is None:
            return None
        run_steps = params.steps if run_steps is None else run_steps
        first = switch_step(run_steps, params.refiner_switch_at)
        return cls(run, params, first, run_steps) if first < run_steps else None

    def stopping(self, callback: Callable) -> Callable:
        """The main pass's step callback, stopping its pipeline call at the switch."""

        def on_step_end(pipe, i, t, tensors):
            result = callback(pipe, i, t, tensors)
            if i + 1 >= self.first_step * pipe.scheduler.order:
                pipe._interrupt = True  # diffusers skips the remaining steps
            return result

        return on_step_end

    def finish(
        self,
        latents: torch.Tensor,
        generators: list[torch.Generator],
        *,
        sampling: SamplerRun,
        ngms: Ngms,
        on_step: Callable,
        main_pipe: Any = None,
    ) -> torch.Tensor:
        """The refiner's steps from the main pass's latents (unless the job stopped);
        `main_pipe`: the pipeline (view) the main pass ran (None: the lease's)."""
        run, params = self.run, self.params
        if run.should_stop():
            return latents
        main_pipe = main_pipe or run.pipe
        lease, family = self._leased()
        run.checkpoints.use(lease)
        pipe = lease.variant(family.pipeline_class("img2img", False))
        pipe.set_progress_bar_config(disable=True)
        conditioning = self._encoded(pipe, family)
        scheduler = _continued(main_pipe.scheduler)
        offset, total = self.first_step * scheduler.order, main_pipe.num_timesteps
        remaining = self.run_steps - self.first_step
        batch = latents.shape[0]
        run.progress.text = "Refiner"
        size = (params.height, params.width)
        flow = lease.spec.prediction_type == "flow"
        try:
            with (
                _continuing(pipe, scheduler, latents, flow),
                family.follow_steps(pipe, conditioning, batch, ngms, first_step=offset,
                                    size=size) as follow,
            ):  # fmt: skip
                latents = pipe(
                    **family.pipeline_call_kwargs(conditioning, params),  # prompts, guidance
                    image=latents,
                    strength=(remaining + 1e-3) / params.steps,  # starts at the switch step
                    num_inference_steps=params.steps,
                    num_images_per_prompt=batch,
                    generator=generators,  # the step noise goes on as in one run
                    callback_on_step_end=follow(_counting_on(on_step, offset, total)),
                    callback_on_step_end_tensor_inputs=["latents"],
                    output_type="latent",
                    **({"latents": family.start_latents(pipe, latents)} if flow else {}),
                    **family.img2img_call_kwargs(*size),  # FLUX: the size of its latents
                    **sampling.pipeline_kwargs,
                    **aesthetic_kwargs(pipe, run.aesthetic_scores),
                ).images
        finally:
            run.progress.text = ""
            run.checkpoints.use(run.lease)
        return family.finished_latents(pipe, latents, *size)  # FLUX: unpacked
        return latents

    def _leased(self) -> tuple[Any, Any]:
        if self._model is None:
            run = self.run
            lease, family = run.checkpoints.lease(self.params.refiner_checkpoint)
            check_compatible(run.family, family, run.lease.spec, lease.spec, FIELD)
            family.check_mode("img2img")
            family.check_mode("refiner")  # FLUX.1 Fill reads a mask: it cannot take over
            self._model = (lease, family)
        return self._model

    def _encoded(self, pipe: Any, family: Any) -> Conditioning:
        """The job's prompts through the refiner's own text encoders (once per job)."""
        if self._conditioning is None:
            params = self.params
            self._conditioning = family.conditioning(
                pipe, params.prompt, params.negative_prompt, params.clip_skip,
                steps=params.steps, embeddings=self.run.networks.embeddings,
            )  # fmt: skip
        return self._conditioning


def _continued(scheduler: Any) -> Any:
    """The scheduler in its current state, under a pipeline call that cannot reset it."""
    twin = copy.copy(scheduler)  # shares its state; the next batch sets the original anew
    twin.set_timesteps = _kept
    twin.set_begin_index = lambda *args, **kwargs: None
    return twin


def _kept(num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None,
          **kwargs) -> None:  # fmt: skip
    """`set_timesteps` of a continued scheduler: nothing changes (its parameters are named
    so that the flow pipelines may pass their `sigmas` and `mu`)."""


@contextmanager
def _continuing(pipe: Any, scheduler: Any, latents: torch.Tensor, flow: bool):
    """For one pipeline call: `scheduler`, and `latents` taken as they are (no noise).
    Flow pipelines (FLUX.1, SD 3.5, Z-Image) are given them as `latents` (packed as the
    family takes them) and run the scheduler's remaining timesteps from its step index
    (their `get_timesteps` does not round the strength as SD's does)."""
    previous = pipe.scheduler
    pipe.scheduler = scheduler
    if flow:
        rest = scheduler.timesteps[scheduler.step_index :]
        pipe.get_timesteps = lambda *args, **kwargs: (rest, len(rest) // scheduler.order)
    else:
        pipe.prepare_latents = lambda *args, **kwargs: latents
    try:
        yield
    finally:
        pipe.__dict__.pop("prepare_latents", None)
        pipe.__dict__.pop("get_timesteps", None)
        pipe.scheduler = previous


def _counting_on(on_step: Callable, offset: int, total: int) -> Callable:
    """The job's step callback, told the step of the whole run (progress, previews)."""

    def on_step_end(pipe, i, t, tensors):
        pipe._num_timesteps = total  # the whole run's count, for the progress
        return on_step(pipe, offset + i, t, tensors)

    return on_step_end
