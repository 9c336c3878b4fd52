"""Build the diffusers scheduler for a resolved A1111 sampler choice.

The one place that imports diffusers for sampling: `make_scheduler()` takes a
`SchedulerChoice` from `webui.core.samplers.resolve()`, the loaded model's scheduler
config and the number of steps, keeps only what describes the model (noise schedule,
prediction type, step offset, ...) and builds `choice.class_name` with the choice's kwargs
for that many steps (one step starts at the top of the noise schedule, as A1111's does;
see `webui.core.samplers`). Settings that belong to whichever scheduler the checkpoint
happened to ship with (Karras sigmas, solver order, timestep spacing, ...) never leak into
the chosen sampler, and a kwarg the class would silently ignore is an error, never a quiet
fallback.

Schedule types whose sigmas A1111 computes itself (KL Optimal, Align Your Steps, and all
schedules of DPM++ 3M SDE) run on the classes of `webui.core.sigma_schedulers`, which take
their sigma list from `webui.core.sigmas` at every `set_timesteps()`.

`bind_sampler_params()` puts a pass's eta / sigma parameters (`webui.core.sampler_params`)
on the scheduler's `step`; `ancestral_step` is Euler a's step with k-diffusion's eta, which
diffusers' `EulerAncestralDiscreteScheduler` does not have.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import diffusers
import torch
from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
    EulerAncestralDiscreteSchedulerOutput,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from ..errors import UserError
from .sampler_params import ETA, SamplerRun
from .samplers import SchedulerChoice, missing_requirements
from .sigma_schedulers import (
    DPMSolver3MSDEScheduler,
    DPMSolverPP2SAncestralScheduler,
    DPMSolverSigmaScheduler,
    EulerSigmaScheduler,
)
from .sigmas import AYS_SD15

__all__ = [
    "MODEL_CONFIG_KEYS",
    "SchedulerUnavailableError",
    "ancestral_step",
    "bind_sampler_params",
    "make_scheduler",
    "set_noise_seed",
    "step_accepts_generator",
]

log = logging.getLogger(__name__)

# Keys of a scheduler config that describe the model rather than the sampler.
MODEL_CONFIG_KEYS: frozenset[str] = frozenset(
    {
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "prediction_type",
        "steps_offset",
        "rescale_betas_zero_snr",
        "clip_sample",
        "clip_sample_range",
        "set_alpha_to_one",
        "thresholding",
        "dynamic_thresholding_ratio",
        "sample_max_value",
        "sigma_min",
        "sigma_max",
        "timestep_type",
        "original_inference_steps",
        "timestep_scaling",
    }
)


class SchedulerUnavailableError(RuntimeError, UserError):
    """The chosen scheduler needs an optional package that is not installed."""


# Our own classes, by the class name `webui.core.samplers` gives them.
_OWN_CLASSES: dict[str, type[SchedulerMixin]] = {
    "DPMSolver3MSDEScheduler": DPMSolver3MSDEScheduler,
    "DPMSolverPP2SAncestralScheduler": DPMSolverPP2SAncestralScheduler,
}
# The class that runs a diffusers class on a computed sigma list.
_SIGMA_CLASSES: dict[str, type[SchedulerMixin]] = {
    "EulerDiscreteScheduler": EulerSigmaScheduler,
    "DPMSolverMultistepScheduler": DPMSolverSigmaScheduler,
    "DPMSolver3MSDEScheduler": DPMSolver3MSDEScheduler,
}


def make_scheduler(
    choice: SchedulerChoice,
    base_config: Mapping[str, Any],
    *,
    steps: int,
    noise_seed: int | Sequence[int] | None = None,
    ays_sigmas: Sequence[float] = AYS_SD15,
) -> SchedulerMixin:
    """A fresh diffusers scheduler for `choice` at `steps` steps, on the model's noise schedule.

    `base_config` is the loaded model's scheduler config (e.g. `pipe.scheduler.config`);
    its prediction_type (epsilon / v_prediction), betas and steps_offset are kept.
    `steps` is the `num_inference_steps` the pipeline will run (`set_timesteps(steps)`):
    for one step the kwargs can differ (`SchedulerChoice.kwargs_for`).
    `noise_seed` seeds the Brownian-tree noise of DPM++ SDE (one int, or one per image
    of the batch); without it that sampler draws a random seed from torch's global RNG.
    Other stochastic samplers take their noise from the `generator` passed to `step()`.
    `ays_sigmas` is the model family's published Align Your Steps list (SD 1.5's by default).
    """
    missing = missing_requirements(choice)
    if missing:
        raise SchedulerUnavailableError(
            f"Sampler {choice.sampler!r} with schedule type {choice.schedule!r} needs the "
            f"Python package(s) {', '.join(missing)}, which are not installed "
            f"(pip install {' '.join(missing)})"
        )
    cls = _scheduler_class(choice)
    config = {k: v for k, v in dict(base_config).items() if k in MODEL_CONFIG_KEYS}
    kwargs = choice.kwargs_for(steps)
    scheduler = cls.from_config(config, **kwargs)
    _check_applied(scheduler, choice, kwargs)
    if choice.sigma_schedule is not None:
        scheduler.configure(
            choice.sigma_schedule,
            ays_sigmas=ays_sigmas,
            discard_penultimate=choice.discard_penultimate_sigma,
        )
    if noise_seed is not None:
        set_noise_seed(scheduler, noise_seed)
    log.debug(
        "scheduler %s for %s / %s, %d steps",
        choice.class_name,
        choice.sampler,
        choice.schedule,
        steps,
    )
    return scheduler


def set_noise_seed(scheduler: SchedulerMixin, seed: int | Sequence[int]) -> None:
    """Seed DPM++ SDE's Brownian-tree noise for the next run (one seed or one per image).

    The tree is rebuilt from this seed after every `set_timesteps()`, so a scheduler
    reused for several batches needs each batch's seeds set before that batch. Schedulers
    without such noise are left alone (they use the generator passed to `step()`).
    """
    if hasattr(scheduler, "noise_sampler_seed"):
        scheduler.noise_sampler_seed = seed if isinstance(seed, int) else [int(s) for s in seed]


def bind_sampler_params(scheduler: SchedulerMixin, sampling: SamplerRun) -> SchedulerMixin:
    """The scheduler with a pass's eta / sigma parameters bound to its `step` (a fresh
    scheduler of one job, built per pass and never shared). The pipeline still passes the
    generator: the bound step keeps that parameter."""
    kwargs = dict(sampling.step_kwargs)
    eta = kwargs.pop(ETA, None)  # the ancestral eta; DDIM's goes to the pipeline call
    if eta is not None and eta != 1.0:  # 1: diffusers' own ancestral step, unchanged
        scheduler.step = functools.partial(ancestral_step, scheduler, ancestral_eta=eta)
    elif kwargs:
        scheduler.step = functools.partial(type(scheduler).step, scheduler, **kwargs)
    return scheduler


def ancestral_step(
    scheduler: Any,
    model_output: torch.Tensor,
    timestep: float | torch.Tensor,
    sample: torch.Tensor,
    generator: torch.Generator | None = None,
    return_dict: bool = True,
    *,
    ancestral_eta: float,
) -> Any:
    """`EulerAncestralDiscreteScheduler.step` with k-diffusion's eta (A1111's "Eta" for
    Euler a): sigma_up = min(sigma_to, eta * sigma_to * sqrt(1 - sigma_to² / sigma_from²)).
    Eta 1 is diffusers' step; eta 0 adds no noise (plain Euler to the next sigma). The
    noise is drawn as diffusers draws it, so the seeds give the same noise either way."""
    if scheduler.step_index is None:
        scheduler._init_step_index(timestep)
    sigma = scheduler.sigmas[scheduler.step_index]
    sigma_to = scheduler.sigmas[scheduler.step_index + 1]
    x = sample.to(torch.float32)
    if scheduler.config.prediction_type == "epsilon":
        denoised = x - sigma * model_output
    elif scheduler.config.prediction_type == "v_prediction":
        denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    else:
        raise ValueError(f"prediction type {scheduler.config.prediction_type!r} not supported")
    full_up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
    sigma_up = torch.minimum(sigma_to, ancestral_eta * full_up)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    prev = x + (x - denoised) / sigma * (sigma_down - sigma)
    noise = randn_tensor(model_output.shape, dtype=model_output.dtype,
                         device=model_output.device, generator=generator)  # fmt: skip
    prev = (prev + noise * sigma_up).to(model_output.dtype)
    scheduler._step_index += 1
    if not return_dict:
        return prev, denoised
    return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)


def step_accepts_generator(scheduler: SchedulerMixin) -> bool:
    """Whether `scheduler.step()` takes a `generator` (pass the job's generators to it)."""
    return "generator" in inspect.signature(scheduler.step).parameters


def _scheduler_class(choice: SchedulerChoice) -> type[SchedulerMixin]:
    """The class to build: diffusers' own, ours, or the one that runs on computed sigmas."""
    if choice.sigma_schedule is None:
        return _OWN_CLASSES.get(choice.class_name) or getattr(diffusers, choice.class_name)
    if choice.class_name not in _SIGMA_CLASSES:
        raise ValueError(
            f"{choice.class_name} cannot run on computed sigmas (schedule type "
            f"{choice.schedule!r} for sampler {choice.sampler!r})"
        )
    return _SIGMA_CLASSES[choice.class_name]


def _check_applied(
    scheduler: SchedulerMixin, choice: SchedulerChoice, kwargs: Mapping[str, Any]
) -> None:
    """from_config drops kwargs a class does not know; refuse instead of running without."""
    for key, value in kwargs.items():
        if scheduler.config.get(key, _MISSING) != value:
            raise ValueError(
                f"{choice.class_name} did not take {key}={value!r} for sampler "
                f"{choice.sampler!r} / schedule type {choice.schedule!r}"
            )


_MISSING = object()
