"""An SD 3.5 transformer run in bfloat16 on the CPU (the memory plan's choice on CPUs that
compute it faster): the pooled text vector is cast with the other inputs, so the job runs
(it failed with "mat1 and mat2 must have the same dtype" before)."""

from __future__ import annotations

import torch

from webui.core.families import SD3
from webui.model_manager.cpu_precision import run_denoiser_in
from webui.model_manager.tiny_sd3 import build_tiny_sd3


def test_the_transformer_runs_in_bf16_with_float32_text_encoders():
    pipe = build_tiny_sd3(seed=2)
    assert run_denoiser_in(pipe, torch.bfloat16)
    conditioning = SD3.conditioning(pipe, "a cat", "blurry", 1, steps=1)
    latents = pipe(**conditioning.pipeline_kwargs(), guidance_scale=4.0, num_inference_steps=1,
                   height=32, width=32, output_type="latent",
                   generator=torch.Generator().manual_seed(1)).images  # fmt: skip
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()
