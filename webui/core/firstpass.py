"""A txt2img job's given first pass (A1111 1.7's `firstpass_image`): with hires. fix on,
the image stands for the first pass, which is not sampled; only the hires. fix pass runs
over it (`webui.core.hires`). The image is brought to the first pass's size (Lanczos) and
encoded by the VAE for the latent upscalers; image upscalers get the image itself, as
A1111 does (no VAE round trip).

This module must never import a UI library, and never change global options.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from PIL import Image

from ..imaging.codec import to_rgb
from .latents import vae_encode
from .params import Txt2ImgParams
from .run import RunContext


class FirstPass(NamedTuple):
    latents: torch.Tensor
    images: list[Image.Image]


def has_first_pass_image(params: Txt2ImgParams) -> bool:
    return params.hires is not None and params.hires.firstpass_image is not None


def first_pass_from_image(run: RunContext, params: Txt2ImgParams) -> FirstPass:
    """The latents and images of one batch whose first pass is the given image."""
    image = to_rgb(params.hires.firstpass_image)
    size = (params.width, params.height)
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    images = [image] * params.batch_size
    return FirstPass(vae_encode(run.pipe, images, run.memory), images)
