"""The initial noise of every image: seeds, variation seeds and "resize seed from".

A1111's method (its `ImageRNG.first` in modules/rng.py), rebuilt here:

- every image has its own CPU generator seeded with its seed; the image's noise is that
  generator's first draw at the latent shape: exactly what diffusers draws from the same
  generator, so an image without variation is pixel for pixel what it was before;
- with a variation strength > 0 the noise is `slerp(strength, noise(seed),
  noise(subseed))`, A1111's slerp (`slerp` below);
- with "resize seed from" W x H both noises are drawn at the latent shape of W x H, and
  that noise is placed centred into the image's own first draw (cropped when W x H is
  larger, the rest of the image's draw around it when it is smaller), so a seed keeps its
  composition at another size;
- the img2img noise multiplier scales the result.

After `initial_noise` each generator has made its one draw, so the step noise of
ancestral samplers continues from where A1111's and diffusers' would.

`NoisyScheduler` gives this noise to a diffusers img2img or inpaint pipeline: those draw
their own noise and pass it to `scheduler.add_noise`, which then uses ours instead (and
adds A1111's "Extra noise" to the first noising, the one that starts the sampling).

This module must never import a UI library, and never change global options or torch's
global random state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSpec:
    """What noise each image of one batch starts from."""

    seeds: tuple[int, ...]
    subseeds: tuple[int, ...] = ()  # one per image; used when subseed_strength > 0
    subseed_strength: float = 0.0
    resize_from: tuple[int, int] = (0, 0)  # (width, height) in pixels; (0, 0): off
    multiplier: float = 1.0  # img2img's initial noise multiplier
    extra: float = 0.0  # A1111's img2img_extra_noise (img2img and hires. fix)

    @classmethod
    def of(
        cls,
        params,
        seeds: Sequence[int],
        subseeds: Sequence[int] | None = None,
        *,
        multiplier: float = 1.0,
        extra: float = 0.0,
    ) -> NoiseSpec:
        """The spec of a batch of `params` (a `Txt2ImgParams`) with these seeds; the
        variation seeds are the batch's own unless given."""
        if subseeds is None:
            subseeds = [params.subseed] * len(seeds)
        return cls(
            seeds=tuple(seeds),
            subseeds=tuple(subseeds),
            subseed_strength=float(params.subseed_strength),
            resize_from=(params.seed_resize_from_w, params.seed_resize_from_h),
            multiplier=multiplier,
            extra=extra,
        )

    @property
    def plain(self) -> bool:
        """True when the noise is just each seed's first draw (diffusers' own noise)."""
        return self.subseed_strength == 0 and 0 in self.resize_from and self.multiplier == 1.0


@dataclass
class InitialNoise:
    noise: torch.Tensor  # (batch, channels, height, width), float32, on the CPU
    generators: list[torch.Generator]  # one per image, after its first draw


def seed_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """The first draw of a CPU generator seeded with `seed` (A1111's CPU `randn`)."""
    return torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(int(seed)))


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's slerp of two (C, H, W) noises, kept as it is so that seeds give A1111's
    images: the vectors are the columns along dim 1, and nearly parallel noises (mean
    cosine over 0.9995) fall back to A1111's linear mix `low * val + high * (1 - val)`."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (
        torch.sin(val * omega) / so
    ).unsqueeze(1) * high


def place_centred(into: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`noise` (C, h, w) centred in a copy of `into` (C, H, W); the overlap is copied
    (A1111's window arithmetic: offsets rounded down, a larger noise is cropped)."""
    out = into.clone()
    dx = (into.shape[2] - noise.shape[2]) // 2
    dy = (into.shape[1] - noise.shape[1]) // 2
    w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    out[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
    return out


def initial_noise(spec: NoiseSpec, shape: Sequence[int], factor: int) -> InitialNoise:
    """The noise of every image of the batch at latent `shape` (C, H, W); `factor` is
    pixels per latent pixel (8 for real models), for the "resize seed from" shape."""
    shape = tuple(int(s) for s in shape)
    from_w, from_h = spec.resize_from
    noise_shape = shape
    if from_w > 0 and from_h > 0:
        noise_shape = (shape[0], max(1, from_h // factor), max(1, from_w // factor))
    generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in spec.seeds]
    noises = []
    for i, (seed, generator) in enumerate(zip(spec.seeds, generators, strict=True)):
        own = torch.randn(shape, generator=generator)  # the image's generator's first draw
        noise = own if noise_shape == shape else seed_noise(seed, noise_shape)
        if spec.subseed_strength != 0:
            subseed = spec.subseeds[i] if i < len(spec.subseeds) else 0
            noise = slerp(spec.subseed_strength, noise, seed_noise(subseed, noise_shape))
        if noise_shape != shape:
            noise = place_centred(own, noise)
        noises.append(noise)
    stacked = torch.stack(noises)
    if spec.multiplier != 1.0:
        stacked = stacked * spec.multiplier
    return InitialNoise(stacked, generators)


class NoisyScheduler:
    """Makes a diffusers scheduler noise the init latents with `noise` instead of the
    noise its pipeline drew. The first noising (the one sampling starts from) also gets
    A1111's extra noise: `extra` times the noise added in the scheduler's own space, as
    A1111 adds it (sigma space for k-diffusion samplers, alpha space for DDIM-like ones).
    Later calls (the inpaint pipeline re-noising the original outside the mask) get the
    same noise without the extra. Install it on a fresh scheduler for one pipeline call."""

    def __init__(self, scheduler, noise: torch.Tensor, extra: float = 0.0):
        if hasattr(scheduler, "scale_noise"):  # flow matching: scale_noise(x, t, noise)
            scale_noise = scheduler.scale_noise
            self.add_noise = lambda original, ours, t: scale_noise(original, t, ours)
        else:
            self.add_noise = scheduler.add_noise
        self.noise, self.extra, self.first = noise, extra, True

    def install(self, scheduler) -> None:
        if hasattr(scheduler, "scale_noise"):
            scheduler.scale_noise = lambda sample, t, noise: self(sample, noise, t)
        else:
            scheduler.add_noise = self

    def __call__(self, original: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        made = self.noise
        if noise.ndim == 3 and made.ndim == 4:  # FLUX's inpaint loop: 2x2-packed latents
            made = pack_2x2(made)
        if noise.shape != made.shape:
            raise ValueError(f"noise {tuple(noise.shape)} asked, {tuple(made.shape)} made")
        ours = made.to(noise.device, noise.dtype)
        noised = self.add_noise(original, ours, timesteps)
        if self.first and self.extra > 0:
            noised = noised + ours * self.extra
        self.first = False
        return noised


def pack_2x2(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents as FLUX packs them: (B, h/2 * w/2, C * 4) patch tokens."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * 4)


def unpack_2x2(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """FLUX's (B, h/2 * w/2, C * 4) patch tokens as the (B, C, h, w) latents they pack."""
    batch, _, packed = tokens.shape
    patches = tokens.reshape(batch, height // 2, width // 2, packed // 4, 2, 2)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, packed // 4, height, width)


def pure_noise_latents(noise: torch.Tensor, scheduler, extra: float = 0.0) -> torch.Tensor:
    """The `latents=` of a pipeline that starts from pure noise (it multiplies them by
    `init_noise_sigma`), with the extra noise added in the scheduler's space as above."""
    if extra <= 0:
        return noise
    return noise * (1 + extra / float(scheduler.init_noise_sigma))
