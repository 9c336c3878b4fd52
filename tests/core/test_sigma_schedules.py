"""KL Optimal, Align Your Steps and DPM++ 3M SDE against A1111's and k-diffusion's formulas,
written out here independently of webui.core.sigmas / webui.core.sigma_schedulers.
(One tiny job per new name, with its infotext round trip: tests/api/test_api.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_utils import AysSchedules

from webui.core.families import SD1, SDXL
from webui.core.samplers import resolve
from webui.core.schedulers import make_scheduler

SD15 = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
}
_BETAS = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
_AC = np.cumprod(1 - _BETAS)
_SIGMAS = np.sqrt((1 - _AC) / _AC)
SMIN, SMAX = _SIGMAS[0], _SIGMAS[-1]

# NVIDIA's published 10-step lists as A1111 1.10 ships them (sd_schedulers.py).
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


def _kl_optimal(n: int) -> np.ndarray:
    """A1111: tan(t/n * atan(sigma_min) + (1 - t/n) * atan(sigma_max)), t = 0..n."""
    return np.array(
        [math.tan(t / n * math.atan(SMIN) + (1 - t / n) * math.atan(SMAX)) for t in range(n + 1)]
    )


def _ays(n: int, published: list[float]) -> np.ndarray:
    """A1111: the list + [0] when n == 11, else log-linear interpolation to n points + [0]."""
    if n == len(published):
        return np.array([*published, 0.0])
    log_rev = [math.log(s) for s in reversed(published)]
    points = []
    for x in np.linspace(0, 1, n):
        pos = x * (len(published) - 1)
        i = min(int(pos), len(published) - 2)
        points.append(math.exp(log_rev[i] + (pos - i) * (log_rev[i + 1] - log_rev[i])))
    return np.array([*reversed(points), 0.0])


def _exponential_discarded(n: int) -> np.ndarray:
    """A1111's DPM++ 3M SDE: Exponential of n + 1 steps, then the next-to-last dropped."""
    sigmas = [math.exp(math.log(SMAX) + k / n * (math.log(SMIN) - math.log(SMAX))) for k in range(n + 1)]  # fmt: skip
    return np.array([*sigmas[:-1], 0.0])


def _karras_discarded(n: int) -> np.ndarray:
    hi, lo = SMAX ** (1 / 7), SMIN ** (1 / 7)
    sigmas = [(hi + k / n * (lo - hi)) ** 7 for k in range(n + 1)]
    return np.array([*sigmas[:-1], 0.0])


def _sigmas_of(sampler: str, schedule: str, steps: int, **kwargs) -> np.ndarray:
    scheduler = make_scheduler(resolve(sampler, schedule), SD15, steps=steps, **kwargs)
    scheduler.set_timesteps(steps)
    return scheduler.sigmas.double().numpy()


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DPM++ 2M SDE Heun"])
@pytest.mark.parametrize("steps", [1, 2, 10, 25])
def test_kl_optimal_sigmas(sampler, steps):
    np.testing.assert_allclose(
        _sigmas_of(sampler, "KL Optimal", steps), _kl_optimal(steps), rtol=1e-4
    )


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M SDE"])
@pytest.mark.parametrize("steps", [2, 7, 10, 11, 30])
def test_align_your_steps_sigmas(sampler, steps):
    np.testing.assert_allclose(
        _sigmas_of(sampler, "Align Your Steps", steps), _ays(steps, AYS_SD15), rtol=1e-4
    )
    np.testing.assert_allclose(
        _sigmas_of(sampler, "Align Your Steps", steps, ays_sigmas=AYS_SDXL),
        _ays(steps, AYS_SDXL),
        rtol=1e-4,
    )


def test_align_your_steps_published_lists():
    """A1111 runs the published list unchanged at 11 steps (its length), 0 appended; at 10
    steps A1111 interpolates it. DPM++ 3M SDE's 10 steps (11, next-to-last dropped) are
    exactly the 10-step list diffusers publishes (its last sigma 0)."""
    np.testing.assert_allclose(
        _sigmas_of("Euler", "Align Your Steps", 11), [*AYS_SD15, 0.0], rtol=1e-6
    )
    sdxl = _sigmas_of("Euler", "Align Your Steps", 11, ays_sigmas=AYS_SDXL)
    np.testing.assert_allclose(sdxl, [*AYS_SDXL, 0.0], rtol=1e-6)
    np.testing.assert_allclose(
        _sigmas_of("DPM++ 3M SDE", "Align Your Steps", 10),
        AysSchedules["StableDiffusionSigmas"],
        rtol=1e-6,
    )
    assert not np.allclose(_sigmas_of("Euler", "Align Your Steps", 10), [*AYS_SD15[:10], 0.0])


def test_align_your_steps_of_one_step_starts_at_the_top():
    assert _sigmas_of("Euler", "Align Your Steps", 1).tolist() == pytest.approx([14.615, 0.0])


def test_the_family_picks_its_align_your_steps_list():
    sd = SD1.scheduler(resolve("Euler", "Align Your Steps"), SD15, 11)
    xl = SDXL.scheduler(resolve("Euler", "Align Your Steps"), SD15, 11)
    for scheduler, published in ((sd, AYS_SD15), (xl, AYS_SDXL)):
        scheduler.set_timesteps(11)
        np.testing.assert_allclose(scheduler.sigmas.numpy(), [*published, 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("schedule", "reference"),
    [("Automatic", _exponential_discarded), ("Exponential", _exponential_discarded),
     ("Karras", _karras_discarded), ("Polyexponential", _exponential_discarded)],
)  # fmt: skip
@pytest.mark.parametrize("steps", [1, 3, 20])
def test_dpmpp_3m_sde_discards_the_next_to_last_sigma(schedule, reference, steps):
    np.testing.assert_allclose(
        _sigmas_of("DPM++ 3M SDE", schedule, steps), reference(steps), rtol=1e-4
    )


# --- the samplers' updates against k-diffusion, with the same model and noise ----------------


def _denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A smooth, non-trivial stand-in for a model: the denoised image at `sigma` (VE x)."""
    return torch.tanh(0.3 * x) / (1 + 0.1 * sigma) + 0.05 * sigma


def _k_dpmpp_3m_sde(x, sigmas, noises):
    """k-diffusion's sample_dpmpp_3m_sde, eta = s_noise = 1, noise given per step."""
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = _denoiser(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = math.log(sigmas[i]) - math.log(sigmas[i + 1])
            h_eta = 2 * h
            x = math.exp(-h_eta) * x + (-math.expm1(-h_eta)) * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = math.expm1(-h_eta) / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                d = (denoised - denoised_1) / (h_1 / h)
                x = x + (math.expm1(-h_eta) / h_eta + 1) * d
            x = x + noises[i] * sigmas[i + 1] * math.sqrt(-math.expm1(-2 * h))
        denoised_1, denoised_2, h_1, h_2 = denoised, denoised_1, h, h_1
    return x


def _k_dpmpp_2m(x, sigmas, noises):
    """k-diffusion's sample_dpmpp_2m."""
    old, h_last = None, 0.0
    for i in range(len(sigmas) - 1):
        denoised = _denoiser(x, sigmas[i])
        t, t_next = -math.log(sigmas[i]), -math.log(sigmas[i + 1]) if sigmas[i + 1] else math.inf
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * denoised
        else:
            r = h_last / h
            x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * (
                (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            )
        old, h_last = denoised, h
    return x


def _k_euler(x, sigmas, noises):
    for i in range(len(sigmas) - 1):
        d = (x - _denoiser(x, sigmas[i])) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def _run_diffusers(scheduler, x_ve, steps, noises):
    """The same model in diffusers' terms (epsilon prediction); returns k-diffusion's x.
    Euler's latents are k-diffusion's (VE) x; DPM-Solver's are x / sqrt(1 + sigma^2)."""
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.double().tolist()
    ve = scheduler.init_noise_sigma != 1
    x = x_ve.float() if ve else (x_ve / math.sqrt(1 + sigmas[0] ** 2)).float()
    for i, t in enumerate(scheduler.timesteps):
        scheduler.scale_model_input(x, t)
        x_k = x.double() * (1.0 if ve else math.sqrt(1 + sigmas[i] ** 2))
        eps = (x_k - _denoiser(x_k, sigmas[i])) / sigmas[i]
        extra = {"variance_noise": noises[i]} if noises is not None else {}
        x = scheduler.step(eps.float(), t, x, **extra).prev_sample
    return x.double() * (1.0 if ve else math.sqrt(1 + sigmas[-1] ** 2))


@pytest.mark.parametrize(
    ("sampler", "schedule", "reference", "noisy"),
    [
        ("DPM++ 3M SDE", "Exponential", _k_dpmpp_3m_sde, True),
        ("DPM++ 3M SDE", "KL Optimal", _k_dpmpp_3m_sde, True),
        ("DPM++ 3M SDE", "Align Your Steps", _k_dpmpp_3m_sde, True),
        ("DPM++ 2M", "KL Optimal", _k_dpmpp_2m, False),
        ("DPM++ 2M", "Align Your Steps", _k_dpmpp_2m, False),
        ("Euler", "KL Optimal", _k_euler, False),
        ("Euler", "Align Your Steps", _k_euler, False),
    ],
)
@pytest.mark.parametrize("steps", [2, 8])
def test_sampler_matches_k_diffusion(sampler, schedule, reference, noisy, steps):
    scheduler = make_scheduler(resolve(sampler, schedule), SD15, steps=steps)
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.double().tolist()
    g = torch.Generator().manual_seed(0)
    x_ve = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64) * sigmas[0]
    noises = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(steps)] if noisy else None
    expected = reference(x_ve.clone(), sigmas, [n.double() for n in noises] if noises else None)
    got = _run_diffusers(scheduler, x_ve.clone(), steps, noises)
    torch.testing.assert_close(got, expected, rtol=2e-4, atol=2e-4)


def test_the_third_order_update_is_k_diffusions_not_diffusers():
    """Against diffusers' own order-3 SDE update the result differs (its phi_3 sign)."""
    from diffusers import DPMSolverMultistepScheduler

    choice = resolve("DPM++ 3M SDE", "Exponential")
    ours = make_scheduler(choice, SD15, steps=8)
    theirs = DPMSolverMultistepScheduler.from_config(SD15, **choice.kwargs)
    ours.set_timesteps(8)
    sigmas = ours.sigmas.double().tolist()
    g = torch.Generator().manual_seed(0)
    x_ve = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64) * sigmas[0]
    noises = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(8)]
    expected = _k_dpmpp_3m_sde(x_ve.clone(), sigmas, [n.double() for n in noises])
    theirs.set_timesteps(8)
    theirs.sigmas, theirs.timesteps = ours.sigmas.clone(), ours.timesteps.clone()
    assert not torch.allclose(_run_diffusers(theirs, x_ve.clone(), 8, noises), expected, atol=1e-3)


def _k_dpmpp_2s_ancestral(x, sigmas, generator):
    """k-diffusion's sample_dpmpp_2s_ancestral, eta = s_noise = 1, Gaussian noise drawn from
    `generator` at each noise addition (as diffusers draws it)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoiser(x, sigma)
        sigma_up = min(sigma_next, math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        if sigma_down == 0:
            x = x + (x - denoised) / sigma * (sigma_down - sigma)
        else:
            t, t_next = -math.log(sigma), -math.log(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (math.exp(-s) / math.exp(-t)) * x - math.expm1(-0.5 * h) * denoised
            denoised_2 = _denoiser(x_2, math.exp(-s))
            x = (math.exp(-t_next) / math.exp(-t)) * x - math.expm1(-h) * denoised_2
        if sigma_next > 0:
            x = x + torch.randn(x.shape, generator=generator).double() * sigma_up
    return x


@pytest.mark.parametrize("schedule", ["Automatic", "Uniform", "Exponential"])
@pytest.mark.parametrize("steps", [1, 2, 6])
def test_dpmpp_2s_ancestral_matches_k_diffusion(schedule, steps):
    scheduler = make_scheduler(resolve("DPM++ 2S a", schedule), SD15, steps=steps)
    scheduler.set_timesteps(steps)
    interleaved = scheduler.sigmas.double().tolist()  # s0, s1, s1, ..., s_n, s_n, s_n
    sigmas = [interleaved[0], *interleaved[1::2]][: steps + 1]
    assert len(sigmas) == steps + 1 and sigmas[-1] == 0
    assert len(scheduler.timesteps) == 2 * steps - 1  # two model calls, one on the last step
    x_ve = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).double()
    x_ve *= sigmas[0]
    expected = _k_dpmpp_2s_ancestral(x_ve.clone(), sigmas, torch.Generator().manual_seed(9))
    x, g = x_ve.float(), torch.Generator().manual_seed(9)
    for t in scheduler.timesteps:
        if scheduler.step_index is None or scheduler.state_in_first_order:
            sigma = float(scheduler.sigmas[scheduler.step_index or 0])
        else:
            sigma = float(scheduler.sigmas_interpol[scheduler.step_index - 1])
        scheduler.scale_model_input(x, t)
        eps = (x.double() - _denoiser(x.double(), sigma)) / sigma
        x = scheduler.step(eps.float(), t, x, generator=g).prev_sample
    torch.testing.assert_close(x.double(), expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [("Euler", "KL Optimal"), ("DPM++ 2M", "Align Your Steps"), ("DPM++ 3M SDE", "Automatic"),
     ("DPM++ 2S a", "Automatic")],
)  # fmt: skip
def test_img2img_starts_at_the_schedules_sigma(sampler, schedule):
    """img2img and hires: the pipeline skips the first steps (set_begin_index) and noises the
    image to the sigma of the first step it runs."""
    scheduler = make_scheduler(resolve(sampler, schedule), SD15, steps=10)
    scheduler.set_timesteps(10)
    start = 5 * scheduler.order
    scheduler.set_begin_index(start)
    sigma = float(scheduler.sigmas[start])
    x0, noise = torch.ones(1, 4, 8, 8), torch.full((1, 4, 8, 8), 0.5)
    noisy = scheduler.add_noise(x0, noise, scheduler.timesteps[start : start + 1])
    if scheduler.init_noise_sigma == 1:  # DPM-Solver's latents: (x0 + sigma * noise) scaled
        expected = (1 + 0.5 * sigma) / math.sqrt(1 + sigma**2)
    else:
        expected = 1 + 0.5 * sigma
    torch.testing.assert_close(noisy, torch.full_like(noisy, expected), rtol=1e-5, atol=1e-5)
    assert math.isclose(sigma, float(_sigmas_of(sampler, schedule, 10)[start]), rel_tol=1e-6)
