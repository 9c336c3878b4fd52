"""Z-Image's img2img and inpaint pipelines as the core runs them: given init latents.

The core encodes the init images itself (masked content, resize modes, the batch's
noise) and hands the pipelines latents, as it does for every family. Diffusers 0.42's
`ZImageImg2ImgPipeline` and `ZImageInpaintPipeline` read only pixels: their image
processor takes 16-channel latents for pixels (it knows 4 latent channels), and the
inpaint pipeline encodes the masked image (which its 16-channel transformer never reads)
and, when given start latents, the init image again. These subclasses take the latents
as they are; with pixels they behave as diffusers' own. `view_class` names them for
`ModelLease.variant` ("ZImageLatentImg2ImgPipeline", "ZImageLatentInpaintPipeline").

This module must never import a UI library.
"""

from __future__ import annotations

import functools
import typing
from typing import Any

LATENT_CHANNELS = 16  # FLUX.1's autoencoder


def view_class(name: str) -> type | None:
    """The pipeline class of this module called `name`; None: not one of them."""
    return _classes().get(name)


@functools.cache
def _classes() -> dict[str, type]:
    import torch
    from diffusers import ZImageImg2ImgPipeline, ZImageInpaintPipeline
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils.torch_utils import randn_tensor

    def latent_processor(pipe: Any) -> VaeImageProcessor:
        return VaeImageProcessor(vae_scale_factor=pipe.vae_scale_factor * 2,
                                 vae_latent_channels=LATENT_CHANNELS)  # fmt: skip

    class ZImageLatentImg2ImgPipeline(ZImageImg2ImgPipeline):
        def __init__(self, scheduler, vae, text_encoder, tokenizer, transformer):
            super().__init__(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)  # fmt: skip
            self.image_processor = latent_processor(self)

    class ZImageLatentInpaintPipeline(ZImageInpaintPipeline):
        def __init__(self, scheduler, vae, text_encoder, tokenizer, transformer):
            super().__init__(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)  # fmt: skip
            self.image_processor = latent_processor(self)

        def prepare_latents(self, image, timestep, batch_size, num_channels_latents, height,
                            width, dtype, device, generator, latents=None):  # fmt: skip
            """Start latents given with init latents: the blend's noise and the latents."""
            if latents is None or image.shape[1] != num_channels_latents:
                return super().prepare_latents(image, timestep, batch_size, num_channels_latents,
                                               height, width, dtype, device, generator, latents)  # fmt: skip
            noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=dtype)
            image = image.to(device=device, dtype=dtype)
            image = image.repeat(batch_size // image.shape[0], 1, 1, 1)
            return latents.to(device=device, dtype=dtype), noise, image

        def prepare_mask_latents(self, mask, masked_image, batch_size, height, width, dtype,
                                 device, generator):  # fmt: skip
            """The mask at the latents' size; latents given as the masked image are kept
            (the 16-channel transformer never reads them; no encode, no draw)."""
            if masked_image.shape[1] != LATENT_CHANNELS:
                return super().prepare_mask_latents(mask, masked_image, batch_size, height,
                                                    width, dtype, device, generator)  # fmt: skip
            size = masked_image.shape[-2:]
            mask = torch.nn.functional.interpolate(mask, size=size, mode="nearest")
            mask = mask.to(device=device, dtype=dtype)
            mask = mask.repeat(batch_size // mask.shape[0], 1, 1, 1)
            latents = masked_image.to(device=device, dtype=dtype)
            return mask, latents.repeat(batch_size // latents.shape[0], 1, 1, 1)

    views = (ZImageLatentImg2ImgPipeline, ZImageLatentInpaintPipeline)
    for view in views:  # from_pipe matches the components by the type hints of __init__
        view.__init__.__annotations__ = typing.get_type_hints(view.__mro__[1].__init__)
    return {view.__name__: view for view in views}
