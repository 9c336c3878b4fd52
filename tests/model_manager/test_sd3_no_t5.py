"""SD 3.5 without T5-XXL (Forge and ComfyUI let users leave `t5xxl` out): a file without
T5 and no T5 module chosen loads with `text_encoder_3` None and generates what diffusers'
own pipeline gives with `text_encoder_3=None` (zeros in T5's place); the other modules are
still required."""

from __future__ import annotations

import pytest
import torch

from webui.core.families import SD3, default_families
from webui.model_manager.loader import MissingModuleError, load_checkpoint

FAMILIES = default_families()


def test_a_file_without_t5_and_no_t5_module_runs_as_diffusers_without_t5(sd3_files):
    from diffusers import StableDiffusion3Pipeline

    encoders = [sd3_files["clip_g"], sd3_files["clip_l"]]
    model = load_checkpoint(sd3_files["no-encoders"], "cpu", torch.float32, FAMILIES, encoders)
    assert model.pipe.text_encoder_3 is None
    assert [p.name for p in model.modules] == ["clip_g.safetensors", "clip_l.safetensors"]
    reference = StableDiffusion3Pipeline(**{**model.pipe.components, "text_encoder_3": None,
                                            "tokenizer_3": None})  # fmt: skip
    conditioning = SD3.conditioning(model.pipe, "a cat", "a dog", 1, steps=1)

    def picture(pipe, **prompts):
        return pipe(**prompts, num_inference_steps=1, height=32, width=32, guidance_scale=4.0,
                    generator=torch.Generator().manual_seed(1), output_type="np").images  # fmt: skip

    ours = picture(model.pipe, **conditioning.pipeline_kwargs())
    theirs = picture(reference, prompt="a cat", negative_prompt="a dog")
    assert abs(ours - theirs).max() < 1e-5


def test_without_t5_the_clip_modules_are_still_required(sd3_files):
    with pytest.raises(MissingModuleError, match="CLIP-G") as caught:
        load_checkpoint(sd3_files["no-encoders"], "cpu", torch.float32, FAMILIES,
                        [sd3_files["clip_l"]])  # fmt: skip
    assert "T5" not in str(caught.value)
