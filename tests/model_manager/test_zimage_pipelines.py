"""Z-Image's img2img and inpaint views take init latents as they are
(`webui.model_manager.zimage_pipelines`), where diffusers' own pipelines resize and
rescale a latent tensor whose side is no multiple of 16 or whose values are all >= 0."""

from __future__ import annotations

import pytest
import torch

from webui.model_manager.zimage_pipelines import view_class


@pytest.mark.parametrize("name", ["ZImageLatentImg2ImgPipeline", "ZImageLatentInpaintPipeline"])
def test_the_views_keep_init_latents_as_they_are(zimage_files, name):
    view = view_class(name).from_pipe(zimage_files["pipe"])  # shares the components
    assert view.transformer is zimage_files["pipe"].transformer
    latents = torch.rand(1, 16, 10, 12)  # all >= 0, a side of 10: no multiple of 16
    assert torch.equal(view.image_processor.preprocess(latents), latents)
    base = type(view).__mro__[1](**zimage_files["pipe"].components)  # diffusers' own
    assert base.image_processor.preprocess(latents).shape != latents.shape


def test_the_inpaint_view_neither_encodes_nor_draws_for_given_latents(zimage_files):
    view = view_class("ZImageLatentInpaintPipeline").from_pipe(zimage_files["pipe"])
    latents, mask = torch.randn(1, 16, 8, 8), torch.ones(1, 1, 32, 32)
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    out_mask, kept = view.prepare_mask_latents(mask, latents, 2, 32, 32, torch.float32, "cpu",
                                               [generator])  # fmt: skip
    assert torch.equal(generator.get_state(), state)
    assert out_mask.shape == (2, 1, 8, 8) and torch.equal(kept, latents.repeat(2, 1, 1, 1))
    start = torch.randn(2, 16, 8, 8)
    got, noise, image = view.prepare_latents(latents, None, 2, 16, 16, 16, torch.float32, "cpu",
                                             None, start)  # fmt: skip
    assert torch.equal(got, start) and noise.shape == start.shape
    assert torch.equal(image, latents.repeat(2, 1, 1, 1))
