"""Soft inpainting's maths without a model: the blend, the step wrapper on real diffusers
schedulers, the weighted percentile filter (against a plain loop) and the settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from webui.core import samplers, soft_inpainting
from webui.core.schedulers import make_scheduler, set_noise_seed
from webui.core.soft_blend import SoftBlend, _kernel, latent_blend, weighted_percentile_filter
from webui.core.soft_inpainting import SoftInpainting

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def test_latent_blend_limits():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 3, 3, generator=gen), torch.randn(1, 4, 3, 3, generator=gen)
    assert torch.allclose(latent_blend(a, b, torch.ones(1, 1, 3, 3), 4.0), b, atol=1e-5)
    assert torch.allclose(latent_blend(a, b, torch.zeros(1, 1, 3, 3), 4.0), a, atol=1e-5)
    half = torch.full((1, 1, 3, 3), 0.5)
    # detail 1: the magnitude is the mean of the magnitudes
    mixed = latent_blend(a, b, half, 1.0)
    norm = torch.linalg.vector_norm
    want = (norm(a, dim=1) + norm(b, dim=1)) / 2
    assert torch.allclose(norm(mixed, dim=1), want, atol=1e-4)
    # a larger boost leans towards the larger magnitude
    boosted = norm(latent_blend(a, b, half, 16.0), dim=1)
    assert (boosted >= norm(mixed, dim=1) - 1e-5).all()


def _schedulers():
    return [
        EulerDiscreteScheduler(**SD),
        EulerDiscreteScheduler(**SD, prediction_type="v_prediction"),
        EulerDiscreteScheduler(**SD, use_karras_sigmas=True),
        DPMSolverMultistepScheduler(**SD),
        DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False),
    ]


@pytest.mark.parametrize("scheduler", _schedulers(), ids=lambda s: type(s).__name__)
def test_step_sees_the_blended_prediction(scheduler):
    """Mask 0 (keep) with preservation > 0: whatever the model says, the scheduler's own
    x0 prediction is the original latents; mask 1: the model output passes unchanged."""
    scheduler.set_timesteps(4)
    gen = torch.Generator().manual_seed(1)
    original = torch.randn(1, 4, 4, 4, generator=gen)
    sample = torch.randn(1, 4, 4, 4, generator=gen) * float(scheduler.init_noise_sigma)
    output = torch.randn(1, 4, 4, 4, generator=gen)
    repaint = torch.zeros(1, 1, 4, 4)
    repaint[..., 2:] = 1
    plain = type(scheduler).from_config(scheduler.config)
    plain.set_timesteps(4)
    SoftBlend(SoftInpainting(), original, repaint).install(scheduler)
    t = scheduler.timesteps[0]
    got = scheduler.step(output, t, sample)
    want = plain.step(output, t, sample)
    if isinstance(scheduler, DDIMScheduler | EulerDiscreteScheduler):
        x0 = got.pred_original_sample
        assert torch.allclose(x0[..., :2].double(), original[..., :2].double(), atol=1e-4)
        mine = want.pred_original_sample
        assert torch.allclose(x0[..., 2:], mine[..., 2:], atol=1e-4)
    else:  # DPM-Solver's first step is Euler in alpha space: the kept half moves to x0
        assert not torch.allclose(got.prev_sample[..., :2], want.prev_sample[..., :2])
        assert torch.allclose(got.prev_sample[..., 2:], want.prev_sample[..., 2:], atol=1e-4)


def _reference_filter(img, low, high, min_width=1.0):
    """A plain loop over pixels, as the method describes it."""
    kernel = _kernel()
    r = kernel.shape[0] // 2
    out = np.zeros_like(img, dtype=np.float64)
    for y in range(img.shape[0]):
        for x in range(img.shape[1]):
            items = sorted(
                (img[yy, xx], kernel[yy - y + r, xx - x + r])
                for yy in range(max(0, y - r), min(img.shape[0], y + r + 1))
                for xx in range(max(0, x - r), min(img.shape[1], x + r + 1))
            )
            total = sum(w for _, w in items)
            lo, hi = total * low, total * high
            if hi - lo < min_width:
                c = (lo + hi) / 2
                lo, hi = c - min_width / 2, c + min_width / 2
                if hi > total:
                    lo, hi = total - min_width, total
                if lo < 0:
                    lo, hi = 0, min_width
            acc = weight = 0.0
            start = 0.0
            for value, w in items:
                share = max(0.0, min(hi, start + w) - max(lo, start))
                acc, weight = acc + value * share, weight + share
                start += w
            out[y, x] = acc / weight if weight else 0
    return out


@pytest.mark.parametrize(("low", "high"), [(0.9, 1.0), (0.25, 0.75), (0.0, 1.0)])
def test_weighted_percentile_filter_matches_a_loop(low, high):
    img = np.random.RandomState(3).rand(6, 7)
    got = weighted_percentile_filter(img, low, high)
    assert np.allclose(got, _reference_filter(img, low, high))


def test_settings_from_args_and_infotext():
    assert soft_inpainting.from_args([False, 3]) is None
    assert soft_inpainting.from_args([]) is None
    settings = soft_inpainting.from_args({"args": [True, 2, None, 8]})
    assert settings == SoftInpainting(mask_blend_power=2, inpaint_detail_preservation=8)
    fields = settings.infotext_fields()
    assert fields["Soft inpainting enabled"] is True
    assert list(fields)[1:] == [s.field for s in soft_inpainting.SETTINGS]
    assert soft_inpainting.from_infotext({k: str(v) for k, v in fields.items()}) == settings
    assert soft_inpainting.from_infotext({"Soft inpainting schedule bias": 2}) is None
    with pytest.raises(ValueError, match="Transition contrast boost"):
        soft_inpainting.from_args([True, 1, 1, 0.5])  # below its minimum of 1


SD15 = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
    "clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "leading",
}  # fmt: skip


def _sample_loop(scheduler, start: torch.Tensor, steps: int) -> torch.Tensor:
    """A pipeline's loop with a fake model (a fixed noise prediction per step)."""
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(0)  # the SDE samplers that draw from the global generator
    set_noise_seed(scheduler, 1)
    scheduler.set_timesteps(steps)
    x = start * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        scheduler.scale_model_input(x, t)
        output = torch.randn(start.shape, generator=gen)
        kwargs = (
            {"generator": torch.Generator().manual_seed(9)} if _takes_generator(scheduler) else {}
        )
        x = scheduler.step(output, t, x, **kwargs, return_dict=False)[0]
    return x


def _takes_generator(scheduler) -> bool:
    import inspect

    return "generator" in inspect.signature(type(scheduler).step).parameters


@pytest.mark.parametrize("name", samplers.SAMPLERS)
def test_every_sampler_ends_on_the_kept_original(name):
    """With the whole mask kept (0), every x0 the sampler sees is the original, so it ends
    on the original (DDIM-like ones within their last alpha); with the whole mask
    repainted the wrapper changes nothing."""
    choice = samplers.resolve(name, None)
    if samplers.missing_requirements(choice):
        pytest.skip("needs an optional package")
    gen = torch.Generator().manual_seed(2)
    original = torch.randn(1, 4, 4, 4, generator=gen)
    start = torch.randn(1, 4, 4, 4, generator=gen)
    kept = make_scheduler(choice, SD15, steps=6)
    SoftBlend(SoftInpainting(), original, torch.zeros(1, 1, 4, 4)).install(kept)
    # TCD's last step goes from t=179 to its sample at t=0, which keeps sqrt(1 - ᾱ₀)·ε
    # (0.03·ε) of the predicted noise, as DDIM's last alpha does from t=1
    assert torch.allclose(
        _sample_loop(kept, start, 6), original, atol=0.2 if name == "TCD" else 0.1
    )
    free = make_scheduler(choice, SD15, steps=6)
    SoftBlend(SoftInpainting(), original, torch.ones(1, 1, 4, 4)).install(free)
    plain = make_scheduler(choice, SD15, steps=6)
    assert torch.allclose(_sample_loop(free, start, 6), _sample_loop(plain, start, 6), atol=1e-4)


def test_latent_nothing_by_the_unrounded_mask_with_soft_inpainting():
    """A1111 turns mask rounding off for soft inpainting: a 40% grey mask keeps 60% of
    the latents under "latent nothing" instead of rounding to keep them all."""
    from PIL import Image

    from webui.core.latents import masked_content_latents

    latents = torch.ones(1, 4, 4, 4)
    grey = Image.new("L", (8, 8), 102)
    soft = masked_content_latents(latents, grey, 3, [1], rounded=False)
    assert torch.allclose(soft, torch.full_like(latents, 0.6), atol=0.01)
    assert torch.equal(masked_content_latents(latents, grey, 3, [1]), latents)
