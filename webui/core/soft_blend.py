"""Soft inpainting's work (A1111 1.7's "Soft Inpainting" method; settings in
`webui.core.soft_inpainting`), in two places of an inpainting job:

- Every step: `SoftBlend.install` wraps the scheduler's `step`. From the model's output it
  takes the denoised prediction (x0, in the scheduler's own noise space: sigma-space for
  k-diffusion samplers, alpha-space for DDIM-like ones; epsilon, v or sample prediction),
  blends it with the original latents by `latent_blend` with the weight
  `mask ** (sigma ** schedule_bias * preservation_strength)` of the *unrounded* latent
  mask (1 = repaint: the grey edge of a blurred mask keeps part of the original, more at
  high noise), and hands the step the model output that predicts the blended x0. This is
  where A1111 blends the denoised latents; the hard 0/1 blend of plain inpainting does not
  run, nor the final latent blend. On a flow-matching schedule (FLUX.1, SD 3.5, Z-Image)
  the output is a velocity: x0 = sample - sigma * v, and the weight reads the sample's
  noise-to-signal ratio sigma / (1 - sigma), the sigma a Stable Diffusion sample of the
  same noise has; FLUX's 2x2-packed tokens are blended unpacked.
- After the last step: `composite_masks` makes, per image, the mask of the final pixel
  composite from how far the result's latents moved from the original's (a weighted
  percentile filter, then a threshold biased by the mask, a contrast curve and a smooth
  step), and `composite` puts the original back through it.

This module must never import a UI library, and never change global options.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..imaging import masks as geometry
from .noise import pack_2x2, unpack_2x2
from .soft_inpainting import SoftInpainting

_MAX_FLOW_RATIO = 1e4  # sigma / (1 - sigma) at the flow schedule's pure noise (sigma 1)


def latent_mask_soft(mask: Image.Image, height: int, width: int) -> torch.Tensor:
    """A processing-size "L" mask at the latent size, NOT rounded: (1, 1, h, w) in [0, 1]."""
    small = np.asarray(mask.convert("L").resize((width, height)), dtype=np.float32) / 255
    return torch.from_numpy(small)[None, None]


def latent_blend(
    original: torch.Tensor, current: torch.Tensor, weight: torch.Tensor, detail: float
) -> torch.Tensor:
    """Interpolate latents (weight 1: `current`), and their per-pixel magnitudes apart: as
    power means of exponent `detail` (Transition contrast boost), which leans towards the
    larger of the two and keeps the contrast a linear blend loses."""
    dtype = current.dtype
    mixed = original * (1 - weight) + current * weight
    norm = torch.linalg.vector_norm
    now = norm(mixed, dim=1, keepdim=True).double() + 1e-5
    a = norm(original, dim=1, keepdim=True).double().pow(detail) * (1 - weight.double())
    b = norm(current, dim=1, keepdim=True).double().pow(detail) * weight.double()
    wanted = (a + b).pow(1 / detail)
    return mixed * (wanted / now).to(dtype)


class SoftBlend:
    """The per-step blend of one batch: `original` latents (B, C, h, w) and the latent
    mask `repaint` (B or 1, 1, h, w; 1 = repaint), installed on one fresh scheduler."""

    def __init__(self, settings: SoftInpainting, original: torch.Tensor, repaint: torch.Tensor):
        self.settings = settings
        self.original = original
        self.repaint = repaint.to(original.device, original.dtype).clamp(0, 1)

    def install(self, scheduler) -> None:
        step = scheduler.step

        def soft_step(model_output, timestep, sample, *args, **kwargs):
            sigma = _sigma_of(scheduler, timestep)
            output = self.blended_output(scheduler, model_output, sample, sigma)
            return step(output, timestep, sample, *args, **kwargs)

        scheduler.step = soft_step

    def weight(self, sigma: float) -> torch.Tensor:
        """A1111's get_modified_nmask: the share of the denoised latents at this sigma."""
        s = self.settings
        return torch.pow(self.repaint, (sigma**s.mask_blend_power) * s.mask_blend_scale)

    def blend(self, original: torch.Tensor, x0: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return latent_blend(original, x0, weight, self.settings.inpaint_detail_preservation)

    def blended(self, x0: torch.Tensor, sigma: float) -> torch.Tensor:
        """The denoised latents `x0` (B, C, h, w) blended with the original at `sigma`."""
        original = self.original.to(x0.device, x0.dtype)
        weight = self.weight(sigma).to(x0.device, x0.dtype)
        return self.blend(original, x0, weight)

    def blended_output(self, scheduler, output: torch.Tensor, sample: torch.Tensor,
                       sigma: float) -> torch.Tensor:  # fmt: skip
        """The model output whose denoised prediction is the blended one."""
        if _flow_matching(scheduler):
            return self.blended_velocity(output, sample, sigma)
        alpha = 1 / math.sqrt(sigma * sigma + 1)  # sqrt(alphas_cumprod)
        beta = sigma * alpha  # sqrt(1 - alphas_cumprod)
        x = sample.double() * (alpha if _sigma_space(scheduler) else 1.0)  # alpha space
        out = output.double()
        kind = scheduler.config.get("prediction_type", "epsilon")
        if kind == "v_prediction":
            x0 = alpha * x - beta * out
        elif kind == "sample":
            x0 = out
        else:
            x0 = (x - beta * out) / alpha
        blended = self.blended(x0, sigma)
        if kind == "v_prediction":
            new = (alpha * x - blended) / beta
        elif kind == "sample":
            new = blended
        else:
            new = (x - alpha * blended) / beta
        return new.to(output.dtype)

    def blended_velocity(self, output: torch.Tensor, sample: torch.Tensor,
                         sigma: float) -> torch.Tensor:  # fmt: skip
        """Flow matching: a sample is (1 - sigma) * x0 + sigma * noise and the model gives the
        velocity v = noise - x0, so x0 = sample - sigma * v; the velocity that predicts the
        blended x0' is (sample - x0') / sigma. FLUX's packed (B, tokens, C * 4) tensors are
        blended as (B, C, h, w) and packed again."""
        if sigma <= 0:  # nothing left to denoise (no model call is made at sigma 0)
            return output
        packed = sample.ndim == 3
        height, width = self.original.shape[-2:]
        x, v = sample.double(), output.double()
        if packed:
            x, v = unpack_2x2(x, height, width), unpack_2x2(v, height, width)
        ratio = min(sigma / max(1.0 - sigma, 1e-12), _MAX_FLOW_RATIO)
        new = (x - self.blended(x - sigma * v, ratio)) / sigma
        return (pack_2x2(new) if packed else new).to(output.dtype)


class UnroundedBlend(SoftBlend):
    """A1111's inpainting with `mask_round` off: every step's denoised latents are put
    linearly over the original by the blurred latent mask as it is (not rounded to 0/1);
    the final composite is plain inpainting's."""

    def __init__(self, original: torch.Tensor, repaint: torch.Tensor):
        super().__init__(None, original, repaint)  # type: ignore[arg-type]  # no settings

    def weight(self, sigma: float) -> torch.Tensor:
        return self.repaint

    def blend(self, original: torch.Tensor, x0: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return original * (1 - weight) + x0 * weight


def _flow_matching(scheduler) -> bool:
    """Whether the scheduler samples a flow-matching schedule, its model output a velocity
    (diffusers' FlowMatchEulerDiscreteScheduler and `core.flow_samplers`' Heun, DPM++ 2M and
    UniPC: FLUX.1's, SD 3.5's and Z-Image's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from .flow_samplers import FlowSigmas

    return isinstance(scheduler, (FlowMatchEulerDiscreteScheduler, FlowSigmas))


def _sigma_space(scheduler) -> bool:
    """Whether the scheduler's samples are x0 + sigma * noise (k-diffusion style, whose
    `init_noise_sigma` is the largest sigma) rather than alpha-scaled (DDIM style)."""
    return float(scheduler.init_noise_sigma) > 1.0


def _sigma_of(scheduler, timestep) -> float:
    """The sigma the model was evaluated at for this `step` call."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and hasattr(scheduler, "step_index"):
        if scheduler.step_index is None and hasattr(scheduler, "_init_step_index"):
            scheduler._init_step_index(timestep)  # what its step() would do first
        return float(sigmas[scheduler.step_index or 0])
    alphas = scheduler.alphas_cumprod
    alpha = float(alphas[int(torch.as_tensor(timestep).flatten()[0])])
    return math.sqrt((1 - alpha) / alpha)


# --- the final pixel composite -----------------------------------------------------------


def composite_masks(
    settings: SoftInpainting, repaint: torch.Tensor, original: torch.Tensor, result: torch.Tensor
) -> list[Image.Image]:
    """Per image, the latent-size "L" mask of the pixel composite (255 = the result's
    pixels): regions whose latents moved little keep the original (A1111's
    apply_adaptive_masks)."""
    s = settings
    mask = repaint[:, 0].float().clamp(0, 1).cpu().numpy()  # (B or 1, h, w)
    scalar = 1 - mask ** (s.mask_blend_scale / 2)
    scalar = 0.5 * (1 - s.composite_mask_influence) + scalar * s.composite_mask_influence
    scalar = scalar / (1.00001 - scalar)
    distance = torch.linalg.vector_norm((result - original).float(), dim=1).cpu().numpy()
    out = []
    for i, dist in enumerate(distance):
        dist = weighted_percentile_filter(dist, 0.9, 1.0)
        dist = weighted_percentile_filter(dist, 0.25, 0.75)
        half = s.composite_difference_threshold * scalar[min(i, len(scalar) - 1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.nan_to_num(dist / half, nan=0.0, posinf=np.inf)
            keep = 1 / (1 + ratio**s.composite_difference_contrast)
        keep = _smootherstep(np.clip(keep, 0, 1))
        out.append(Image.fromarray(((1 - keep) * 255).astype(np.uint8), "L"))
    return out


def composite(
    result: Image.Image,
    overlay: Image.Image,
    small_mask: Image.Image,
    paste_to: tuple[int, int, int, int] | None,
) -> Image.Image:
    """The result with the original (the RGB of the job's `overlay`) put back through the
    latent-size mask from `composite_masks`: scaled to the processing size of `result`,
    blurred (radius 4, A1111's anti-aliasing), and uncropped for "only masked"."""
    mask = geometry.resize_image(geometry.RESIZE_AND_FILL, small_mask, *result.size)
    mask = mask.filter(ImageFilter.GaussianBlur(4))
    if paste_to is not None:
        x, y, w, h = paste_to
        canvas = Image.new("L", overlay.size, 0)
        canvas.paste(geometry.resize_image(geometry.CROP_AND_RESIZE, mask, w, h), (x, y))
        mask = canvas
    return geometry.apply_overlay(result, geometry.make_overlay(overlay, mask), paste_to)


def _smootherstep(x: np.ndarray) -> np.ndarray:
    return x * x * x * (x * (6 * x - 15) + 10)


@lru_cache(maxsize=1)
def _kernel(stddev: float = 1.5, radius: int = 2) -> np.ndarray:
    """A1111's 5x5 Gaussian kernel, tapered to 0 one pixel beyond `radius`, 1 at the centre."""
    zero = math.exp(-((radius + 1.0) ** 2) / stddev**2)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    return np.maximum(0.0, (np.exp(-squared / stddev**2) - zero) / (1 - zero))


def weighted_percentile_filter(
    image: np.ndarray, low: float, high: float, min_width: float = 1.0
) -> np.ndarray:
    """A1111's weighted_histogram_filter, vectorised: for every pixel, the neighbours
    (weighted by the kernel, clipped at the border) sorted by value are stacked by weight;
    the result is the mean over the stack between the `low` and `high` fractions (a window
    at least `min_width` weight wide)."""
    kernel = _kernel()
    r = kernel.shape[0] // 2
    h, w = image.shape
    padded = np.pad(image.astype(np.float64), r)
    inside = np.pad(np.ones((h, w)), r)
    values, weights = [], []
    for dy in range(kernel.shape[0]):
        for dx in range(kernel.shape[1]):
            values.append(padded[dy : dy + h, dx : dx + w])
            weights.append(inside[dy : dy + h, dx : dx + w] * kernel[dy, dx])
    v, wt = np.stack(values, -1), np.stack(weights, -1)
    order = np.argsort(v, axis=-1, kind="stable")
    v, wt = np.take_along_axis(v, order, -1), np.take_along_axis(wt, order, -1)
    top = np.cumsum(wt, -1)
    bottom = top - wt
    total = top[..., -1:]
    lo, hi = total * low, total * high
    narrow = (hi - lo) < min_width
    centre = (lo + hi) / 2
    lo = np.where(narrow, centre - min_width / 2, lo)
    hi = np.where(narrow, centre + min_width / 2, hi)
    over = narrow & (hi > total)
    lo, hi = np.where(over, total - min_width, lo), np.where(over, total, hi)
    under = narrow & (lo < 0)
    lo, hi = np.where(under, 0.0, lo), np.where(under, min_width, hi)
    share = np.clip(np.minimum(hi, top) - np.maximum(lo, bottom), 0, None)
    summed = share.sum(-1)
    return np.where(summed > 0, (v * share).sum(-1) / np.where(summed > 0, summed, 1), 0.0)
