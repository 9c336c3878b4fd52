"""FLUX.1 Fill: Black Forest Labs' inpainting transformer, in the Inpaint tab.

- Recognised by its wider input layer, read from the tensors: `img_in` takes the packed
  latents (64 features), the packed latents of the masked image (64) and the mask packed
  from pixel resolution (4 x f x f, f the autoencoder's scale factor: 384 in all for
  FLUX.1 Fill's 8) where FLUX.1 dev takes 64; every other size as `flux.FluxFamily`
  reads it. Diffusers folders: `FluxFillPipeline`, or a `FluxPipeline` folder whose
  transformer config has the wider `in_channels`.
- Runs as diffusers' `FluxFillPipeline` does: every step the transformer reads the
  latents with the masked image's latents and the mask concatenated (`fill_conditioning`:
  the image with the masked area blanked, encoded; the mask binarised at one half, as its
  pipeline does). As the core does for SD's 9-channel inpainting models, it is the
  pipeline of every img2img and inpaint job (no mask: the whole image is repainted at the
  denoising strength) and A1111's overlay puts the unmasked original back.
- txt2img and hires fix are refused with a message: the model needs an image and a mask;
  so is a CFG scale above 1 (the Fill pipeline has no true CFG; its guidance is Forge's
  "Distilled CFG Scale", 30 in Black Forest Labs' examples).

This module must never import a UI library.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...errors import UserError
from ...model_manager.identify import ModelSpec
from ..conditioning import Conditioning
from ..noise import pack_2x2
from .base import Mode
from .flux import FluxFamily


def is_fill(transformer: dict) -> bool:
    """Whether a transformer config (read from the tensors) is FLUX.1 Fill's: its input
    layer reads more than the latents it predicts."""
    return transformer["in_channels"] > transformer["out_channels"]


class FluxFillFamily(FluxFamily):
    name = "flux1-fill"
    label = "FLUX.1 Fill"
    folder_classes = frozenset({"FluxFillPipeline"})
    refiner = False  # it reads a mask in every step: it neither takes nor gives the Refiner
    # a FluxPipeline folder holding a Fill transformer too (told by its in_channels)
    folder_claims = frozenset({"FluxFillPipeline", "FluxPipeline"})

    def accepts(self, transformer: dict) -> bool:
        return is_fill(transformer)

    def _spec(self, transformer: dict, vae: dict, encoders: tuple, missing=()) -> ModelSpec:
        spec = super()._spec(transformer, vae, encoders, missing)
        return replace(spec, pipeline_class="FluxFillPipeline", inpainting=True)

    def pipeline_class(self, mode: Mode, inpainting: bool) -> str:
        return "FluxFillPipeline"

    def load_single_file(self, path: Path, spec: ModelSpec, modules, dtype) -> Any:
        pipe = super().load_single_file(path, spec, modules, dtype)
        names = ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2",
                 "tokenizer_2", "transformer")  # fmt: skip
        return fill_pipeline_class()(**{name: getattr(pipe, name) for name in names})

    def check_mode(self, mode: Mode) -> None:
        if mode == "txt2img":
            raise UserError(
                f"{self.label} is an inpainting model: use it in img2img's Inpaint tab "
                "(txt2img and hires fix cannot run it)"
            )
        super().check_mode(mode)

    def check_params(self, params: Any) -> None:
        """Distilled guidance only: diffusers' Fill pipeline has no true CFG."""
        if params.cfg_scale > 1:
            raise UserError(f"{self.label} runs with CFG scale 1 here (no negative prompt)")

    def pipeline_call_kwargs(self, conditioning: Conditioning, params: Any) -> dict[str, Any]:
        self.check_params(params)
        kwargs = super().pipeline_call_kwargs(conditioning, params)
        kwargs.pop("true_cfg_scale")
        return kwargs

    def masked_image_latents(self, pipe: Any, pixels: torch.Tensor | None, mask: Image.Image):
        return fill_conditioning(pipe, pixels, mask)


def fill_conditioning(pipe: Any, pixels: torch.Tensor | None, mask: Image.Image) -> torch.Tensor:
    """The packed (B, tokens, 64 + 4 f f) conditioning of a batch: the latents of the image
    with the masked area blanked, and the mask packed from pixel resolution, as
    `FluxFillPipeline.prepare_mask_latents` makes them (the image encoded at the mode of
    its distribution, not a random sample)."""
    from ..latents import vae_encode_pixels

    if pixels is None:
        raise ValueError("FLUX.1 Fill needs the init pixels")
    height, width = pixels.shape[-2:]
    repaint = np.asarray(mask.convert("L").resize((width, height)), dtype=np.float32) >= 127.5
    repaint_t = torch.from_numpy(repaint.astype(np.float32))[None, None].to(pixels.dtype)
    latents = vae_encode_pixels(pipe, pixels * (1 - repaint_t))
    batch, f = latents.shape[0], pipe.vae_scale_factor
    lat_h, lat_w = latents.shape[-2:]
    patches = repaint_t.expand(batch, 1, height, width)[:, 0]
    patches = patches.reshape(batch, lat_h, f, lat_w, f).permute(0, 2, 4, 1, 3)
    mask_latents = patches.reshape(batch, f * f, lat_h, lat_w).to(latents.dtype)
    return torch.cat((pack_2x2(latents), pack_2x2(mask_latents)), dim=-1)


@cache
def fill_pipeline_class() -> type:
    """`FluxFillPipeline` taking the init latents (`image`) and the conditioning
    (`masked_image_latents`) together, and start noise as (B, 16, h, w) like the inpaint
    pipeline."""
    from diffusers import FluxFillPipeline

    class FluxFillLatentsPipeline(FluxFillPipeline):
        def check_inputs(self, *args, image=None, masked_image_latents=None, **kwargs):
            return super().check_inputs(
                *args, image=None, masked_image_latents=masked_image_latents, **kwargs
            )

        def prepare_latents(self, image, timestep, batch_size, num_channels_latents, height,
                            width, dtype, device, generator, latents=None):  # fmt: skip
            if latents is not None and latents.ndim == 4:
                latents = pack_2x2(latents)
            return super().prepare_latents(image, timestep, batch_size, num_channels_latents,
                                           height, width, dtype, device, generator, latents)  # fmt: skip

    return FluxFillLatentsPipeline


FLUX1_FILL = FluxFillFamily()
