"""Heun, DPM++ 2M and UniPC on a flow-matching schedule (FLUX.1, SD 3.5, Z-Image).

diffusers' FLUX / SD 3.5 / Z-Image pipelines hand their scheduler's `set_timesteps` the
sigmas and the `mu` (FLUX.1 dev's resolution-dependent shift) that
`FlowMatchEulerDiscreteScheduler` understands; `FlowMatchHeunDiscreteScheduler` takes
neither, and the multistep DPM-Solver and UniPC with `use_flow_sigmas` build their own
rounded, shift-only sigmas. So each class here takes its sigmas from a flow-matching Euler
scheduler on the same config (the job's shift, the family's dynamic shift, the schedule
type's Beta / Karras / Exponential spacing), exactly the sigmas Euler steps on, and
steps on them with its own solver. The multistep ones read the model's output as a flow
(`prediction_type="flow_prediction"`: x0 = x - sigma * v; alpha = 1 - sigma) and noise
init latents as the flow does (`scale_noise`), for img2img and inpaint.

This module must never import a UI library.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

# The multistep solvers read a flow model's output. Not `use_flow_sigmas`: their sigmas
# are replaced below, and with it FLUX.1's pipeline would not hand them its own sigmas.
_FLOW_MULTISTEP = {"prediction_type": "flow_prediction"}
# A1111's DPM++ 2M: second order up to the last step, first order into sigma 0.
DPMPP_2M = {**_FLOW_MULTISTEP, "algorithm_type": "dpmsolver++", "solver_order": 2,
            "solver_type": "midpoint", "lower_order_final": False,
            "final_sigmas_type": "zero"}  # fmt: skip
# UniPC's bh2 variant steps into sigma 0 (bh1, A1111's, needs a final sigma_min); order 2:
# a third order would reach back to sigma 1, where the flow's alpha (and lambda) vanish.
UNIPC = {**_FLOW_MULTISTEP, "solver_order": 2, "solver_type": "bh2", "predict_x0": True,
         "final_sigmas_type": "zero"}  # fmt: skip


def euler_sigmas(flow_config: Mapping[str, Any], num_inference_steps, device, **given):
    """(sigmas ending in 0, timesteps) of flow-matching Euler on `flow_config` for the
    pipeline's `set_timesteps` arguments (`sigmas`, `mu`, `timesteps`)."""
    euler = FlowMatchEulerDiscreteScheduler.from_config(dict(flow_config))
    euler.set_timesteps(num_inference_steps, device=device, **given)
    return euler.sigmas.to("cpu", torch.float32), euler.timesteps


class FlowSigmas:
    """`set_timesteps` on Euler's sigmas and the flow's `scale_noise` (a mixin)."""

    flow_config: Mapping[str, Any] = {}  # the Euler config the sigmas come from

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None,
                      timesteps=None) -> None:  # fmt: skip
        given = {"sigmas": sigmas, "mu": mu, "timesteps": timesteps}
        flow_sigmas, flow_timesteps = euler_sigmas(self.flow_config, num_inference_steps,
                                                   device, **given)  # fmt: skip
        self._use_sigmas(flow_sigmas, flow_timesteps)
        self._step_index = None
        self._begin_index = None

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """The flow's forward process at `timestep`: sigma * noise + (1 - sigma) * sample."""
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index].to(sample.device, sample.dtype)
        return sigma * noise + (1.0 - sigma) * sample


class _FlowMultistep(FlowSigmas):
    def _sigma_to_alpha_sigma_t(self, sigma):
        """The flow's path: x = (1 - sigma) * x0 + sigma * noise."""
        return 1 - sigma, sigma

    def _use_sigmas(self, sigmas: torch.Tensor, timesteps: torch.Tensor) -> None:
        self.sigmas, self.timesteps = sigmas, timesteps
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self.last_sample = None


class FlowDPMSolverMultistepScheduler(_FlowMultistep, DPMSolverMultistepScheduler):
    """DPM-Solver++ (2M) on flow-matching Euler's sigmas."""


class FlowUniPCMultistepScheduler(_FlowMultistep, UniPCMultistepScheduler):
    """UniPC on flow-matching Euler's sigmas."""


class FlowHeunScheduler(FlowSigmas, FlowMatchHeunDiscreteScheduler):
    """Heun on flow-matching Euler's sigmas: each step to a sigma above 0 is corrected
    with a second model call there (its timesteps repeat, `order` 2); the last is Euler."""

    def _use_sigmas(self, sigmas: torch.Tensor, timesteps: torch.Tensor) -> None:
        self.num_inference_steps = len(timesteps)
        self.timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
        self.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        self.prev_derivative = None
        self.dt = None


_CLASSES = {
    "FlowHeunScheduler": (FlowHeunScheduler, {}),
    "FlowDPMSolverMultistepScheduler": (FlowDPMSolverMultistepScheduler, DPMPP_2M),
    "FlowUniPCMultistepScheduler": (FlowUniPCMultistepScheduler, UNIPC),
}


def flow_solver(class_name: str, flow_config: Mapping[str, Any]) -> Any:
    """The scheduler `class_name` stepping on Euler's sigmas of `flow_config` (the model's
    schedule config with the job's shift and the schedule type's spacing)."""
    cls, solver = _CLASSES[class_name]
    scheduler = cls(**solver)  # its own schedule settings are unused: Euler's sigmas
    # without diffusers' record of defaulted keys, which `from_config` would drop again
    scheduler.flow_config = {k: v for k, v in flow_config.items() if k != "_use_default_values"}
    return scheduler


@contextmanager
def heun_strength(pipe: Any) -> Iterator[None]:
    """img2img's start on Heun's schedule: FLUX.1's and Z-Image's pipelines hand the
    scheduler their sigmas and then count its timesteps as steps, 2n - 1 for Heun, so the
    strength would pick a start past its end. For one call, the start is counted in Heun's
    n steps (diffusers' own `get_timesteps` otherwise)."""
    if not isinstance(getattr(pipe, "scheduler", None), FlowHeunScheduler):
        yield
        return

    def get_timesteps(num_inference_steps, strength, device=None):
        scheduler = pipe.scheduler
        steps = scheduler.num_inference_steps
        start = int(max(steps - min(steps * strength, steps), 0))
        scheduler.set_begin_index(start * scheduler.order)
        return scheduler.timesteps[start * scheduler.order :], steps - start

    pipe.get_timesteps = get_timesteps
    try:
        yield
    finally:
        del pipe.get_timesteps
