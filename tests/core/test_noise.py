"""The initial noise (`webui.core.noise`): seeds, variation seeds, resize seed from, noise
multiplier and extra noise, checked against formulas written out here independently.

A1111's variation noise is `slerp(strength, noise(seed), noise(subseed))` where A1111's
slerp treats every column along dim 1 of a (C, H, W) noise as a vector; `_column_slerp`
below computes that column by column with numpy. "Resize seed from" draws the noise at the
from-size and puts it in the middle of the image's own noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from webui.core.errors import ParamError
from webui.core.noise import (
    NoiseSpec,
    NoisyScheduler,
    initial_noise,
    pure_noise_latents,
    slerp,
)
from webui.core.params import Txt2ImgParams

SHAPE = (4, 8, 6)


def _draw(seed: int, shape=SHAPE) -> np.ndarray:
    """A CPU generator's first draw, as diffusers and A1111 (CPU) make it."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, *shape), generator=generator)[0].numpy().astype(np.float64)


def _column_slerp(t: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Spherical interpolation of every (c, :, w) column, one vector at a time."""
    out = np.empty_like(low)
    for c in range(low.shape[0]):
        for w in range(low.shape[2]):
            a, b = low[c, :, w], high[c, :, w]
            cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
            omega = math.acos(cos)
            out[c, :, w] = (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(
                omega
            )
    return out


def test_plain_noise_is_each_seeds_first_draw():
    made = initial_noise(NoiseSpec((7, 8)), SHAPE, 8)
    for i, seed in enumerate((7, 8)):
        np.testing.assert_array_equal(made.noise[i].numpy(), _draw(seed).astype(np.float32))


def test_generators_have_made_their_first_draw():
    made = initial_noise(NoiseSpec((7,), (99,), 0.5), SHAPE, 8)
    fresh = torch.Generator("cpu").manual_seed(7)
    torch.randn(SHAPE, generator=fresh)
    expected = torch.randn(SHAPE, generator=fresh)
    assert torch.equal(torch.randn(SHAPE, generator=made.generators[0]), expected)


@pytest.mark.parametrize("strength", [0.1, 0.5, 0.9])
def test_variation_noise_is_the_slerp_of_both_seeds(strength):
    made = initial_noise(NoiseSpec((11, 11), (20, 21), strength), SHAPE, 8)
    for i, subseed in enumerate((20, 21)):
        expected = _column_slerp(strength, _draw(11), _draw(subseed))
        np.testing.assert_allclose(made.noise[i].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_strength_one_is_the_variation_seeds_noise():
    made = initial_noise(NoiseSpec((11,), (20,), 1.0), SHAPE, 8)
    np.testing.assert_allclose(made.noise[0].numpy(), _draw(20), rtol=1e-5, atol=1e-6)


def test_same_seed_and_subseed_fall_back_to_a1111s_linear_mix():
    low = torch.from_numpy(_draw(3)).float()
    assert torch.allclose(slerp(0.3, low, low), low)


def test_batch_seeds_and_subseeds():
    plain = Txt2ImgParams(seed=10, subseed=50, batch_size=2, batch_count=2)
    assert plain.image_seeds() == [10, 11, 12, 13]
    varied = Txt2ImgParams(seed=10, subseed=50, subseed_strength=0.3, batch_size=2, batch_count=2)
    assert varied.image_seeds() == [10, 10, 10, 10]  # A1111: all share the seed
    assert varied.image_subseeds() == [50, 51, 52, 53]  # and the variation seed counts up
    top = Txt2ImgParams(seed=4294967294, subseed=4294967294, batch_size=2)
    assert top.image_subseeds() == [4294967294, 0]


def test_random_subseed_is_fixed_with_the_seed():
    fixed = Txt2ImgParams(seed=5, subseed=-1).with_seed()
    assert fixed.seed == 5 and 0 <= fixed.subseed <= 4294967294
    assert Txt2ImgParams(seed=-1, subseed=9).with_seed().subseed == 9


def test_smaller_resize_from_is_centred_in_the_images_own_noise():
    # target 8x6 latent pixels (64x48 px at factor 8), noise made at 32x32 px = 4x4 latents
    spec = NoiseSpec((5,), resize_from=(32, 32))
    got = initial_noise(spec, SHAPE, 8).noise[0].numpy()
    own, small = _draw(5, SHAPE), _draw(5, (4, 4, 4))
    expected = own.copy()
    dy, dx = (8 - 4) // 2, (6 - 4) // 2  # 2 rows down, 1 column right
    expected[:, dy : dy + 4, dx : dx + 4] = small
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_larger_resize_from_is_cropped_to_its_middle():
    spec = NoiseSpec((5,), resize_from=(80, 96))  # 10 wide, 12 high in latents
    got = initial_noise(spec, SHAPE, 8).noise[0].numpy()
    big = _draw(5, (4, 12, 10))
    top, left = (12 - 8) // 2, (10 - 6) // 2
    np.testing.assert_array_equal(got, big[:, top : top + 8, left : left + 6].astype(np.float32))


def test_resize_from_with_variation_slerps_at_the_from_size():
    spec = NoiseSpec((5,), (6,), 0.4, resize_from=(32, 32))
    got = initial_noise(spec, SHAPE, 8).noise[0].numpy()
    mixed = _column_slerp(0.4, _draw(5, (4, 4, 4)), _draw(6, (4, 4, 4)))
    np.testing.assert_allclose(got[:, 2:6, 1:5], mixed, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[:, 0, :], _draw(5)[:, 0, :].astype(np.float32))


def test_noise_multiplier_scales_the_noise():
    plain = initial_noise(NoiseSpec((3,)), SHAPE, 8).noise
    scaled = initial_noise(NoiseSpec((3,), multiplier=0.5), SHAPE, 8).noise
    assert torch.allclose(scaled, plain * 0.5)


def test_noisy_scheduler_uses_our_noise_and_adds_extra_noise_once():
    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(10)
    original = torch.zeros((1, *SHAPE))
    ours = torch.ones((1, *SHAPE))
    t = scheduler.timesteps[3:4]
    sigma = float(scheduler.sigmas[3])
    NoisyScheduler(scheduler, ours, extra=0.25).install(scheduler)
    first = scheduler.add_noise(original, torch.full_like(ours, 7.0), t)
    assert torch.allclose(first, ours * (sigma + 0.25))  # A1111: x + noise * (sigma + extra)
    again = scheduler.add_noise(original, torch.full_like(ours, 7.0), t)
    assert torch.allclose(again, ours * sigma)  # re-noising the original: no extra
    with pytest.raises(ValueError):
        scheduler.add_noise(original, torch.zeros((2, *SHAPE)), t)


def test_pure_noise_latents_carry_the_extra_noise():
    scheduler = EulerDiscreteScheduler()
    noise = torch.ones((1, *SHAPE))
    sigma = float(scheduler.init_noise_sigma)
    latents = pure_noise_latents(noise, scheduler, 0.5) * sigma  # as the pipeline scales it
    assert torch.allclose(latents, noise * (sigma + 0.5))
    assert pure_noise_latents(noise, scheduler, 0.0) is noise


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"subseed": -2}, "subseed"),
        ({"subseed_strength": 1.5}, "subseed_strength"),
        ({"subseed_strength": float("nan")}, "subseed_strength"),
        ({"subseed_strength": "0.5"}, "subseed_strength"),
        ({"seed_resize_from_w": 512}, "seed_resize_from_h"),
        ({"seed_resize_from_w": 4, "seed_resize_from_h": 512}, "seed_resize_from_w"),
        ({"seed_resize_from_w": 512, "seed_resize_from_h": 99999}, "seed_resize_from_h"),
    ],
)
def test_bad_variation_params_name_the_field(changes, field):
    with pytest.raises(ParamError) as err:
        Txt2ImgParams(**changes).validated()
    assert err.value.field == field
