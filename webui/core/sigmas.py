"""A1111's sigma schedules that diffusers has no option for, as plain arrays.

`sigma_schedule()` computes the noise levels (sigmas, k-diffusion's VE scale) of a run for
the schedule types A1111 (1.10, modules/sd_schedulers.py) computes itself and diffusers
cannot: KL Optimal and Align Your Steps, and, for samplers that discard the next-to-last
sigma (DPM++ 3M SDE), Karras and Exponential of one step more. `webui.core.schedulers`
hands the result to the diffusers scheduler instead of its own spacing.

One deliberate difference from A1111: Align Your Steps of exactly one step is
[first published sigma, 0]; A1111's is [0.029, 0], a step from the bottom of the noise
schedule that returns the initial noise (the rule of `webui.core.samplers`: one step
starts at the top).

This module is numbers only: it never imports diffusers or a UI library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "AYS_SD15",
    "AYS_SDXL",
    "SIGMA_SCHEDULES",
    "align_your_steps",
    "discard_next_to_last",
    "exponential",
    "karras",
    "kl_optimal",
    "model_sigma_range",
    "sigma_schedule",
]

# NVIDIA's published 10-step Align Your Steps sigmas (A1111's lists, ending at sigma_min);
# a model family names its list (`Family.align_your_steps`).
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def model_sigma_range(alphas_cumprod: np.ndarray) -> tuple[float, float]:
    """(sigma_min, sigma_max) of a model's noise schedule: its first and last training
    sigma, sqrt((1 - a) / a), as A1111 takes them from the k-diffusion model wrapper."""
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    sigmas = np.sqrt((1 - a) / a)
    return float(sigmas[0]), float(sigmas[-1])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """k-diffusion's get_sigmas_karras: n sigmas on a rho-power ramp, then 0."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return np.append((hi + ramp * (lo - hi)) ** rho, 0.0)


def exponential(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """k-diffusion's get_sigmas_exponential (= Polyexponential with rho 1): n sigmas evenly
    spaced in log sigma, then 0."""
    return np.append(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)), 0.0)


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """A1111's kl_optimal: n + 1 sigmas evenly spaced in arctan(sigma), from sigma_max to
    sigma_min (no 0 appended: the last step ends at sigma_min, as in A1111)."""
    frac = np.arange(n + 1) / n
    return np.tan(frac * math.atan(sigma_min) + (1 - frac) * math.atan(sigma_max))


def align_your_steps(n: int, published_list: Sequence[float]) -> np.ndarray:
    """A1111's get_align_your_steps_sigmas for a published list: the list with 0
    appended when n is its length (11), else the list log-linearly interpolated to n
    points (in A1111's loglinear_interp), then 0. So 10 steps are an interpolation and 11
    steps the published list, exactly as A1111 does."""
    published = np.array(published_list, dtype=np.float64)
    if n == 1:
        return np.array([published[0], 0.0])
    if n == len(published):
        return np.append(published, 0.0)
    xs = np.linspace(0, 1, len(published))
    ys = np.log(published[::-1])
    interpolated = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1]
    return np.append(interpolated, 0.0)


def discard_next_to_last(sigmas: np.ndarray) -> np.ndarray:
    """A1111's discard_next_to_last_sigma: drop the next-to-last sigma."""
    return np.concatenate([sigmas[:-2], sigmas[-1:]])


SIGMA_SCHEDULES = ("Karras", "Exponential", "Polyexponential", "KL Optimal", "Align Your Steps")


def sigma_schedule(
    schedule: str,
    steps: int,
    alphas_cumprod: np.ndarray,
    *,
    ays_sigmas: Sequence[float] = AYS_SD15,
    discard_penultimate: bool = False,
) -> np.ndarray:
    """The sigmas of `steps` steps of an A1111 schedule type, ending in 0 (KL Optimal: in
    sigma_min), as float64; `discard_penultimate` computes one step more and drops the
    next-to-last sigma (A1111's discard_next_to_last_sigma). Raises ValueError for a
    schedule type not in SIGMA_SCHEDULES."""
    n = steps + 1 if discard_penultimate else steps
    sigma_min, sigma_max = model_sigma_range(alphas_cumprod)
    if schedule == "Karras":
        sigmas = karras(n, sigma_min, sigma_max)
    elif schedule in ("Exponential", "Polyexponential"):
        sigmas = exponential(n, sigma_min, sigma_max)
    elif schedule == "KL Optimal":
        sigmas = kl_optimal(n, sigma_min, sigma_max)
    elif schedule == "Align Your Steps":
        sigmas = align_your_steps(n, ays_sigmas)
    else:
        raise ValueError(f"no sigma formula for schedule type {schedule!r}")
    return discard_next_to_last(sigmas) if discard_penultimate else sigmas
