"""Soft inpainting's and mask_round off's per-step blends on a flow-matching schedule
(FLUX.1, SD 3.5, Z-Image) without a model: diffusers' FlowMatchEulerDiscreteScheduler, a
velocity as the model output, FLUX's 2x2-packed tokens."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from webui.core.noise import pack_2x2, unpack_2x2
from webui.core.soft_blend import SoftBlend, UnroundedBlend
from webui.core.soft_inpainting import SoftInpainting

FLOW = dict(num_train_timesteps=1000, shift=3.0)


def _scheduler(steps: int = 4) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(**FLOW)
    scheduler.set_timesteps(steps)
    return scheduler


def _tensors(seed: int = 1, channels: int = 16) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, channels, 4, 6, generator=gen) for _ in range(3))


def _half_mask() -> torch.Tensor:
    repaint = torch.zeros(1, 1, 4, 6)
    repaint[..., 3:] = 1  # the right half is repainted
    return repaint


def test_pack_2x2_and_unpack_2x2_are_fluxs():
    (latents, *_) = _tensors()
    packed = pack_2x2(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 1, 16, 4, 6))
    assert torch.equal(unpack_2x2(packed, 4, 6), latents)
    assert torch.equal(FluxPipeline._unpack_latents(packed, 32, 48, 8), latents)


@pytest.mark.parametrize("packed", [False, True], ids=["grid", "flux-packed"])
def test_the_step_sees_the_blended_denoised_latents(packed):
    """x0 = sample - sigma * v: where the mask keeps (0) the velocity handed to the step
    predicts the original, where it repaints (1) the model's velocity passes unchanged."""
    original, sample, velocity = _tensors()
    shape = pack_2x2 if packed else (lambda t: t)
    scheduler, plain = _scheduler(), _scheduler()
    SoftBlend(SoftInpainting(), original, _half_mask()).install(scheduler)
    t = scheduler.timesteps[1]
    scheduler._init_step_index(t)
    plain._init_step_index(t)
    sigma = float(scheduler.sigmas[1])
    got = scheduler.step(shape(velocity), t, shape(sample)).prev_sample
    want = plain.step(shape(velocity), t, shape(sample)).prev_sample
    if packed:
        got, want = unpack_2x2(got, 4, 6), unpack_2x2(want, 4, 6)
    sigma_next = float(plain.sigmas[2])
    # Euler: prev = sample + (sigma_next - sigma) * v, with v = (sample - x0) / sigma
    kept = sample + (sigma_next - sigma) * (sample - original) / sigma
    assert torch.allclose(got[..., :3], kept[..., :3], atol=1e-5)
    assert torch.allclose(got[..., 3:], want[..., 3:], atol=1e-5)


def _loop(blend, start: torch.Tensor, packed: bool, steps: int = 5) -> torch.Tensor:
    """A pipeline's loop from pure noise with a fake model (a fixed velocity per step)."""
    scheduler = _scheduler(steps)
    if blend is not None:
        blend.install(scheduler)
    gen = torch.Generator().manual_seed(5)
    x = pack_2x2(start) if packed else start
    for t in scheduler.timesteps:
        velocity = torch.randn(start.shape, generator=gen)
        x = scheduler.step(pack_2x2(velocity) if packed else velocity, t, x).prev_sample
    return unpack_2x2(x, *start.shape[-2:]) if packed else x


@pytest.mark.parametrize("packed", [False, True], ids=["grid", "flux-packed"])
def test_kept_areas_end_on_the_original_and_repainted_ones_follow_the_model(packed):
    original, start, _ = _tensors(2)
    keep = SoftBlend(SoftInpainting(), original, torch.zeros(1, 1, 4, 6))
    assert torch.allclose(_loop(keep, start, packed), original, atol=1e-5)
    free = SoftBlend(SoftInpainting(), original, torch.ones(1, 1, 4, 6))
    assert torch.allclose(_loop(free, start, packed), _loop(None, start, packed), atol=1e-5)
    unrounded = UnroundedBlend(original, torch.zeros(1, 1, 4, 6))
    assert torch.allclose(_loop(unrounded, start, packed), original, atol=1e-5)


def test_the_weight_reads_the_noise_to_signal_ratio():
    """A grey (0.5) mask keeps more of the original at high noise: the blend weight is
    A1111's mask ** (sigma ** bias * strength) at sigma / (1 - sigma), the sigma an SD
    sample of the same noise has; at preservation strength 0 the model's x0 is taken
    (mask ** 0 = 1), as in A1111."""
    original = torch.zeros(1, 4, 2, 2)
    grey = torch.full((1, 1, 2, 2), 0.5)
    x0 = torch.ones(1, 4, 2, 2)

    def share(settings: SoftInpainting, sigma: float) -> float:
        blend = SoftBlend(settings, original, grey)
        sample = (1 - sigma) * x0 + sigma * torch.ones_like(x0)  # noise = 1: v = 0
        v = blend.blended_velocity(torch.zeros_like(x0), sample, sigma)
        return float((sample - sigma * v).mean())  # the blended x0: original 0, model 1

    linear = SoftInpainting(inpaint_detail_preservation=1.0)  # a plain linear blend
    for sigma in (0.2, 0.5, 0.8):
        ratio = sigma / (1 - sigma)
        assert share(linear, sigma) == pytest.approx(0.5 ** (ratio * 0.5), abs=1e-4)
    assert share(linear, 0.9) < share(linear, 0.5) < share(linear, 0.1)
    assert share(linear, 1.0) == pytest.approx(0.0, abs=1e-4)  # pure noise: all kept
    zero = SoftInpainting(mask_blend_scale=0.0, inpaint_detail_preservation=1.0)
    for sigma in (0.3, 1.0):
        assert share(zero, sigma) == pytest.approx(1.0, abs=1e-4)
