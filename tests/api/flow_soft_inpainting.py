"""Soft inpainting and mask_round off on a flow-matching family (FLUX.1, SD 3.5, Z-Image),
through the API: the checks each family's img2img test runs with its own `post` (the
init image and image readers are `tests.flow_api`'s)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
from PIL import Image

from tests.flow_api import b64, distance, images, init_image

Post = Callable[..., httpx.Response]
DEFAULTS = [1, 0.5, 4, 0, 0.5, 2]  # A1111's: schedule bias, preservation strength, ...


def soft(*args) -> dict:
    return {"Soft inpainting": {"args": [True, *(args or DEFAULTS)]}}


def _quarter_mask() -> Image.Image:
    """The left quarter repainted; blurred by 4 pixels, it is grey up to column 20."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 16, 64))
    return mask


def check_soft_inpainting(post: Post, inpainting_model: bool = False) -> None:
    """Inside the mask the picture is repainted, beyond the blur (and the composite's
    dilation) the original is kept, and the result is not plain inpainting's with the same
    blurred mask. Preservation strength 0 and difference threshold 0 take the model's
    latents everywhere and every pixel: img2img of the whole image (A1111's behaviour; not
    for an `inpainting_model`, which reads the mask itself)."""
    init = np.asarray(init_image(), dtype=np.int16)
    blurred = {"mask": b64(_quarter_mask()), "mask_blur": 4, "denoising_strength": 0.9}
    response = post(**blurred, alwayson_scripts=soft())
    (image,) = images(response)
    (hard,) = images(post(**blurred))
    assert distance(image[:, :12], init[:, :12]) > 1  # repainted
    assert np.abs(image[:, 48:] - init[:, 48:]).max() <= 1  # kept
    assert distance(image[:, :24], hard[:, :24]) > 0.5  # not plain inpainting
    assert "Soft inpainting enabled: True" in response.json()["info"]
    (pure,) = images(post(**{**blurred, "denoising_strength": 1.0}, alwayson_scripts=soft()))
    assert np.abs(pure[:, 48:] - init[:, 48:]).max() <= 1  # from pure noise (sigma 1) too
    if inpainting_model:
        return
    (everywhere,) = images(post(**blurred, alwayson_scripts=soft(1, 0, 4, 0, 0, 2)))
    (whole,) = images(post(denoising_strength=0.9))  # no mask
    assert np.abs(everywhere - whole).max() <= 1
    assert distance(everywhere[:, 48:], init[:, 48:]) > 1  # outside the mask too


def check_mask_round_off(post: Post) -> None:
    """mask_round false blends every step by the blurred latent mask as it is: the grey
    edge differs from the rounded mask's result; beyond the blur the original is kept."""
    init = np.asarray(init_image(), dtype=np.int16)
    blurred = {"mask": b64(_quarter_mask()), "mask_blur": 4, "denoising_strength": 0.9}
    (rounded,) = images(post(**blurred))
    (unrounded,) = images(post(**blurred, mask_round=False))
    assert not np.array_equal(unrounded[:, :24], rounded[:, :24])
    assert np.array_equal(unrounded[:, 32:], init[:, 32:])
    assert distance(unrounded[:, :12], init[:, :12]) > 1  # repainted
