"""FLUX.1 Fill's conditioning as diffusers' `FluxFillPipeline` builds it, and its
recognition by the input layer's width (the tiny model: 64 + 64 + 4 x 2 x 2 features)."""

from __future__ import annotations

import torch
from PIL import Image

from webui.core.families import FLUX1, FLUX1_FILL, default_families
from webui.core.families.flux_fill import fill_conditioning, fill_pipeline_class
from webui.model_manager import tiny_flux
from webui.model_manager.identify import identify
from webui.model_manager.loader import read_shapes


def test_fill_conditioning_packs_the_mask_as_the_fill_pipeline_does(tmp_path):
    pipe = tiny_flux.build_tiny_flux(seed=3, fill=True)
    fill = fill_pipeline_class()(**{n: getattr(pipe, n) for n in (
        "scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
        "transformer")})  # fmt: skip
    mask = Image.new("L", (32, 16), 0)
    mask.paste(255, (4, 0, 20, 10))
    pixels = torch.rand(1, 3, 16, 32) * 2 - 1
    ours = fill_conditioning(fill, pixels, mask)
    mask_t = fill.mask_processor.preprocess(mask, height=16, width=32)
    theirs_mask, _ = fill.prepare_mask_latents(
        mask_t, torch.zeros(1, 16, 8, 16), 1, 16, 1, 16, 32, torch.float32, "cpu", None
    )
    assert ours.shape == (1, 4 * 8, 64 + 16)
    assert torch.equal(ours[..., 64:], theirs_mask)
    assert pipe.transformer.config.in_channels == tiny_flux.FILL_IN_CHANNELS == ours.shape[-1] + 64


def test_fill_is_its_own_family_by_the_input_layer(tmp_path):
    fill = tiny_flux.save_transformer(tiny_flux.build_tiny_flux(seed=3, fill=True),
                                      tmp_path / "flux1-fill.safetensors")  # fmt: skip
    spec = identify(read_shapes(fill), default_families())
    assert (spec.family, spec.inpainting) == (FLUX1_FILL.name, True)
    assert spec.unet["in_channels"] == tiny_flux.FILL_IN_CHANNELS
    dev = tiny_flux.save_transformer(tiny_flux.build_tiny_flux(seed=3),
                                     tmp_path / "flux1-dev.safetensors")  # fmt: skip
    assert identify(read_shapes(dev), default_families()).family == FLUX1.name
