"""FLUX.1 Kontext: told apart by its file name (its tensors are FLUX.1 dev's), and its
reference tokens: our img2img at strength 1 with `reference_tokens` predicts what
diffusers' `FluxKontextPipeline` does with the same init image and noise."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from webui.core.families import FLUX1, FLUX1_KONTEXT, default_families
from webui.core.families.flux_kontext import reference_tokens
from webui.model_manager import tiny_flux
from webui.model_manager.loader import identify_file


def test_a_kontext_file_is_told_by_its_name(tmp_path):
    pipe = tiny_flux.build_tiny_flux(seed=4)
    dev = tiny_flux.save_transformer(pipe, tmp_path / "flux1-dev.safetensors")
    kontext = tiny_flux.save_transformer(pipe, tmp_path / "flux1-Kontext-dev.safetensors")
    families = default_families()
    assert identify_file(dev, families).family == FLUX1.name
    spec = identify_file(kontext, families)
    assert (spec.family, spec.family_label) == (FLUX1_KONTEXT.name, "FLUX.1 Kontext")
    assert families.of(spec) is FLUX1_KONTEXT
    titled = tmp_path / "my-edits.safetensors"
    save_file(load_file(dev), titled, metadata={"modelspec.title": "FLUX.1 Kontext [dev]"})
    assert identify_file(titled, families).family == FLUX1_KONTEXT.name


def test_reference_tokens_are_what_the_kontext_pipeline_gives_the_transformer():
    from diffusers import FluxImg2ImgPipeline, FluxKontextPipeline

    pipe = tiny_flux.build_tiny_flux(seed=4)
    pipe.set_progress_bar_config(disable=True)
    image = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    common = dict(prompt="add a hat", height=32, width=32, num_inference_steps=2,
                  guidance_scale=3.5, output_type="latent")  # fmt: skip
    kontext = FluxKontextPipeline.from_pipe(pipe)
    kontext.set_progress_bar_config(disable=True)
    theirs = kontext(image=image, generator=torch.Generator().manual_seed(1),
                     _auto_resize=False, max_area=32 * 32, **common).images  # fmt: skip
    img2img = FluxImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    with reference_tokens(pipe.transformer, image):
        ours = img2img(image=image, strength=1.0, generator=torch.Generator().manual_seed(1),
                       **common).images  # fmt: skip
    plain = img2img(image=image, strength=1.0, generator=torch.Generator().manual_seed(1),
                    **common).images  # fmt: skip
    assert ours.shape == theirs.shape == (1, 64, 64)
    torch.testing.assert_close(ours, theirs)
    assert not torch.allclose(plain, theirs)  # without the reference: another picture
