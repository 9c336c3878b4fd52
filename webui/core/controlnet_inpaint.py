"""`inpaint_only` keeps the unmasked area: sd-webui-controlnet's per-step restore, in latents.

An `inpaint_only` unit gives its ControlNet the masked hint (`core/controlnet.py`); as the
extension (`hook.py`, "Post-processing for restore") it also makes every UNet call's
prediction keep the hint image outside the unit's mask: from the call's noisy latents and
prediction it takes the denoised estimate x0, puts the hint image's latents (VAE-encoded
once per size) over it where the mask (max-pooled to the latent grid with a 10x10
window, stride 8, padding 1, for a VAE of factor 8: a margin of one latent) is 0, turns that back into the model's
kind of prediction (epsilon or v) and mixes it in by the unit's weight (clamped to 0..1).
So outside the mask the result is the hint image (within the VAE's round trip) while the
inside is generated.

The UNet is called on variance-preserving latents x_t = a x0 + b eps (k-diffusion samplers
scale theirs down before the call), a = sqrt(alphas_cumprod[t]); a fractional timestep
(Karras sigmas) is placed between its neighbours in log-sigma, as the schedulers place it.

After decoding (before faces are restored, as the extension's `postprocess_batch`),
`kept_pixels` pastes the hint image back outside the mask, dilated by 7 pixels and
blurred by a 7x7 box (the extension's `inpaint_only_post_processing`, its default
`control_net_inpaint_blur_sigma`), so the kept area has the image's own pixels.

As the extension, none of this runs in a job that has its own inpaint mask (Inpaint, or
img2img with a mask): the job's inpainting keeps the unmasked area there already (the
extension falls back to `inpaint_global_harmonious`).

This module must never import a UI library.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from .latents import vae_encode

BLUR_SIGMA = 7  # sd-webui-controlnet's control_net_inpaint_blur_sigma default


def _alpha_beta(scheduler: Any, timestep: Any, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """sqrt(alphas_cumprod) and sqrt(1 - alphas_cumprod) at a (possibly fractional) timestep."""
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    log_sigmas = ((1 - alphas) / alphas).sqrt().log()
    t = torch.as_tensor(timestep, dtype=torch.float64).flatten()[:1].clamp(0, len(alphas) - 1)
    low = t.floor().long()
    high = (low + 1).clamp(max=len(alphas) - 1)
    w = t - low
    sigma = ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()
    alpha = 1 / (1 + sigma * sigma).sqrt()
    return alpha.to(like.device, like.dtype), (sigma * alpha).to(like.device, like.dtype)


def _hint_latents(part: Any, pipe: Any, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """(the hint image's latents, the latent mask: 1 = generate, 0 = keep)."""
    key = (height, width)
    if key not in part.origin:
        hint = part.hint(height, width)
        image = Image.fromarray(np.ascontiguousarray(hint[:, :, :3]))
        latents = vae_encode(pipe, [image])
        mask = torch.from_numpy((hint[:, :, 3] > 127).astype(np.float32))[None, None]
        f = pipe.vae_scale_factor  # 8: the extension's 10x10 window, stride 8
        mask = torch.nn.functional.max_pool2d(mask, (f + 2, f + 2), stride=(f, f), padding=1)
        part.origin[key] = (latents, mask[:, :, : latents.shape[2], : latents.shape[3]])
    return part.origin[key]


def kept_prediction(parts: list[Any], pipe: Any, sample: torch.Tensor, timestep: Any,
                    prediction: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The UNet's prediction with the `parts` (inpaint_only units) keeping their image
    outside their masks, each mixed in by its weight."""
    scheduler = pipe.scheduler
    kind = scheduler.config.get("prediction_type", "epsilon")
    x = sample[:, : prediction.shape[1]].double()
    out = prediction.double()
    alpha, beta = _alpha_beta(scheduler, timestep, x)
    factor = pipe.vae_scale_factor
    for part in parts:
        weight = max(0.0, min(1.0, float(part.unit.weight)))
        origin, mask = _hint_latents(part, pipe, x.shape[2] * factor, x.shape[3] * factor)
        origin, mask = origin.to(x.device, x.dtype), mask.to(x.device, x.dtype)
        x0 = alpha * x - beta * out if kind == "v_prediction" else (x - beta * out) / alpha
        x0 = x0 * mask + origin * (1 - mask)
        new = (alpha * x - x0) / beta if kind == "v_prediction" else (x - alpha * x0) / beta
        out = new * weight + out * (1 - weight)
    return out.to(prediction.dtype)


def kept_pixels(control: Any, image: Image.Image) -> Image.Image:
    """A decoded image with the keeping units' images pasted back outside their masks."""
    parts = [p for p in (control.controlnets if control is not None else []) if p.keep]
    parts = [p for p in parts if p.unit.weight > 0]
    if not parts:
        return image
    x = np.asarray(image.convert("RGB"), np.float32) / 255
    kernel = np.ones((BLUR_SIGMA, BLUR_SIGMA), np.uint8)
    for part in parts:
        hint = part.hint(image.height, image.width)
        mask = cv2.dilate((hint[:, :, 3] > 127).astype(np.float32), kernel)
        mask = cv2.blur(mask, (BLUR_SIGMA, BLUR_SIGMA))[:, :, None]
        x = mask * x + (1 - mask) * hint[:, :, :3].astype(np.float32) / 255
    return Image.fromarray((x.clip(0, 1) * 255).round().astype(np.uint8))
