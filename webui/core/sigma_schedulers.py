"""Schedulers of our own: diffusers classes that run on sigmas from `webui.core.sigmas`,
DPM++ 3M SDE and DPM++ 2S a.

A1111 computes some schedules itself (KL Optimal, Align Your Steps; Karras / Exponential
of one step more with the next-to-last sigma dropped, for DPM++ 3M SDE). The classes here
are the diffusers classes whose update uses only the sigma list, so that a list of any
spacing is sampled exactly:

- `EulerSigmaScheduler` (Euler): diffusers' own `set_timesteps(sigmas=...)`.
- `DPMSolverSigmaScheduler` (DPM++ 2M, 2M SDE, 2M SDE Heun): the multistep state is reset
  by diffusers' `set_timesteps`, then the sigma list and its (fractional, as A1111's
  unquantized k-diffusion wrapper passes them) model timesteps replace diffusers' own.
- `DPMSolver3MSDEScheduler` (DPM++ 3M SDE): the same, with k-diffusion's
  sample_dpmpp_3m_sde third-order update. diffusers' sde-dpmsolver++ order-3 update has
  the opposite sign on the 1/2 in the second-difference coefficient; its first- and
  second-order ("heun") updates are k-diffusion's already.

- `DPMSolverPP2SAncestralScheduler` (DPM++ 2S a): k-diffusion's sample_dpmpp_2s_ancestral
  (eta 1). Its model calls are DPM2 a's (sigma_i, then sqrt(sigma_i * sigma_down), the
  midpoint in log sigma; one call on the last step, which goes to 0), and its first stage
  is DPM2 a's Euler step to that midpoint, so diffusers' KDPM2AncestralDiscreteScheduler
  runs it with the second stage replaced by DPM-Solver++(2S)'s update.

`set_timesteps(n)` computes the list for n steps (the pipelines call it with
`num_inference_steps`, img2img too), so a pipeline needs no `sigmas=` argument.
`configure()` must be called once after construction. Nothing here imports a UI library.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
)
from diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete import (
    KDPM2AncestralDiscreteSchedulerOutput,
)
from diffusers.utils.torch_utils import randn_tensor

from .sigmas import AYS_SD15, sigma_schedule

__all__ = [
    "DPMSolver3MSDEScheduler",
    "DPMSolverPP2SAncestralScheduler",
    "DPMSolverSigmaScheduler",
    "EulerSigmaScheduler",
]


class _SigmaScheduleMixin:
    """`set_timesteps(n)` runs on `sigma_schedule(...)` of n steps."""

    _schedule: str | None = None
    _ays_sigmas: tuple[float, ...] = AYS_SD15
    _discard_penultimate: bool = False

    def configure(
        self, schedule: str, *, ays_sigmas: Sequence[float], discard_penultimate: bool
    ) -> None:
        """Which A1111 schedule type to compute (see `webui.core.sigmas.sigma_schedule`)."""
        self._schedule = schedule
        self._ays_sigmas = tuple(ays_sigmas)
        self._discard_penultimate = discard_penultimate

    def schedule_sigmas(self, steps: int) -> np.ndarray:
        """The sigmas (float64, steps + 1 of them) this scheduler runs `steps` steps on."""
        if self._schedule is None:
            raise RuntimeError(f"{type(self).__name__}.configure() was not called")
        return sigma_schedule(
            self._schedule,
            steps,
            self.alphas_cumprod.numpy(),  # type: ignore[attr-defined]
            ays_sigmas=self._ays_sigmas,
            discard_penultimate=self._discard_penultimate,
        )

    def _sigma_timesteps(self, sigmas: np.ndarray) -> np.ndarray:
        """The model timestep of each sigma but the last, interpolated in log sigma."""
        a = self.alphas_cumprod.numpy().astype(np.float64)  # type: ignore[attr-defined]
        log_sigmas = np.log(np.sqrt((1 - a) / a))
        return np.array([self._sigma_to_t(s, log_sigmas) for s in sigmas[:-1]])  # type: ignore[attr-defined]


class EulerSigmaScheduler(_SigmaScheduleMixin, EulerDiscreteScheduler):
    """Euler on an A1111 sigma list (diffusers' own custom-sigmas path)."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kw):
        if num_inference_steps is None or kw.get("sigmas") is not None or kw.get("timesteps"):
            return super().set_timesteps(num_inference_steps, device, **kw)
        sigmas = self.schedule_sigmas(num_inference_steps)
        return super().set_timesteps(device=device, sigmas=sigmas.tolist())


class DPMSolverSigmaScheduler(_SigmaScheduleMixin, DPMSolverMultistepScheduler):
    """DPM-Solver++ multistep on an A1111 sigma list."""

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kw):
        if num_inference_steps is None or kw.get("timesteps") is not None:
            return super().set_timesteps(num_inference_steps, device, **kw)
        super().set_timesteps(num_inference_steps, device, **kw)  # resets the multistep state
        sigmas = self.schedule_sigmas(num_inference_steps)
        timesteps = self._sigma_timesteps(sigmas)
        self.sigmas = torch.from_numpy(sigmas.astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device)
        self.num_inference_steps = len(timesteps)
        return None


class DPMSolver3MSDEScheduler(DPMSolverSigmaScheduler):
    """k-diffusion's DPM++ 3M SDE (eta 1): algorithm_type "sde-dpmsolver++", solver_type
    "heun", solver_order 3, with k-diffusion's third-order update."""

    def multistep_dpm_solver_third_order_update(
        self,
        model_output_list: list[torch.Tensor],
        *args: Any,
        sample: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.config.algorithm_type != "sde-dpmsolver++" or sample is None or noise is None:
            raise ValueError("DPMSolver3MSDEScheduler needs sde-dpmsolver++, a sample and noise")
        i = self.step_index
        lambdas = [self._lambda(self.sigmas[j]) for j in (i + 1, i, i - 1, i - 2)]
        alpha_t, sigma_t = self._sigma_to_alpha_sigma_t(self.sigmas[i + 1])
        _, sigma_s0 = self._sigma_to_alpha_sigma_t(self.sigmas[i])
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        h, h_1, h_2 = (lambdas[0] - lambdas[1], lambdas[1] - lambdas[2], lambdas[2] - lambdas[3])
        r0, r1 = h_1 / h, h_2 / h
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        h_eta = 2.0 * h  # eta = 1
        phi_2 = torch.expm1(-h_eta) / h_eta + 1
        phi_3 = phi_2 / h_eta - 0.5
        x = (sigma_t / sigma_s0 * torch.exp(-h)) * sample - alpha_t * torch.expm1(-h_eta) * m0
        x = x + alpha_t * (phi_2 * d1 - phi_3 * d2)
        return x + sigma_t * torch.sqrt(-torch.expm1(-2.0 * h)) * noise

    def _lambda(self, sigma: torch.Tensor) -> torch.Tensor:
        alpha, sigma_t = self._sigma_to_alpha_sigma_t(sigma)
        return torch.log(alpha) - torch.log(sigma_t)


class DPMSolverPP2SAncestralScheduler(KDPM2AncestralDiscreteScheduler):
    """k-diffusion's DPM++ 2S a (eta 1) on DPM2 a's sigmas and model calls."""

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> KDPM2AncestralDiscreteSchedulerOutput | tuple:
        if self.step_index is None:
            self._init_step_index(timestep)
        if self.state_in_first_order:  # Euler to the midpoint (or to 0 on the last step)
            return super().step(model_output, timestep, sample, generator, return_dict)
        i = self.step_index - 1  # the step whose first stage stored its input
        sigma, sigma_mid = self.sigmas[i], self.sigmas_interpol[i]
        sigma_up, sigma_down = self.sigmas_up[i], self.sigmas_down[i]
        denoised = self._denoised(model_output, sample, sigma_mid)
        x, self.sample = self.sample, None
        ratio = sigma_down / sigma  # exp(-h), h = log(sigma / sigma_down)
        prev_sample = ratio * x + (1 - ratio) * denoised
        noise = randn_tensor(
            model_output.shape,
            dtype=model_output.dtype,
            device=model_output.device,
            generator=generator,
        )
        prev_sample = prev_sample + noise * sigma_up
        self._step_index += 1
        if not return_dict:
            return (prev_sample, denoised)
        return KDPM2AncestralDiscreteSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=denoised
        )

    def _denoised(self, model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor):
        """The model's denoised image at `sigma` (k-diffusion's x0), as diffusers' step does."""
        if self.config.prediction_type == "epsilon":
            return sample - sigma * model_output
        if self.config.prediction_type == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
        raise ValueError(f"prediction_type {self.config.prediction_type!r} is not supported")
