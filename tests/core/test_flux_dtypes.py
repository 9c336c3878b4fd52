"""FLUX with the transformer in bfloat16 and the text encoders in float32 (what a CPU
with bf16 instructions loads): the prompt embeddings come in the transformer's dtype, so
the pipelines, which make their latents in the embeddings' dtype, run."""

from __future__ import annotations

import torch
from diffusers import FluxImg2ImgPipeline

from webui.core.flux_text import flux_conditioning
from webui.model_manager import tiny_flux
from webui.model_manager.manager import keeping_dtypes


def test_bf16_transformer_with_fp32_text_encoders_runs_img2img():
    pipe = tiny_flux.build_tiny_flux(seed=5)
    pipe.transformer.to(torch.bfloat16)
    conditioning = flux_conditioning(pipe, "a cat", "", steps=2, fields=("p", "n"))
    kwargs = conditioning.pipeline_kwargs()
    assert kwargs["prompt_embeds"].dtype == torch.bfloat16
    assert kwargs["pooled_prompt_embeds"].dtype == torch.bfloat16
    img2img = keeping_dtypes(FluxImg2ImgPipeline).from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    image = torch.randn(1, 16, 16, 16, dtype=torch.bfloat16)
    out = img2img(prompt_embeds=kwargs["prompt_embeds"],
                  pooled_prompt_embeds=kwargs["pooled_prompt_embeds"], image=image,
                  strength=0.5, height=32, width=32, num_inference_steps=2,
                  output_type="latent").images  # fmt: skip
    assert out.shape == (1, 64, 64) and out.dtype == torch.bfloat16


def test_a_pipeline_view_keeps_the_dtypes_of_the_shared_modules():
    """diffusers' from_pipe casts every shared module to float32 unless told otherwise."""
    pipe = tiny_flux.build_tiny_flux(seed=5)
    pipe.transformer.to(torch.bfloat16)
    view = keeping_dtypes(FluxImg2ImgPipeline).from_pipe(pipe)
    assert type(view).__name__ == "FluxImg2ImgPipeline"
    assert view.transformer is pipe.transformer
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.text_encoder.dtype == pipe.vae.dtype == torch.float32
