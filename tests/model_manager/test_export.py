"""Single-file LDM export of tiny pipelines, read back by diffusers' own loader."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402

from webui.model_manager.export import export_single_file, partial_path  # noqa: E402
from webui.model_manager.tiny import (  # noqa: E402
    build_tiny_pipeline,
    save_tiny_checkpoint,
    save_tiny_diffusers,
)
from webui.model_manager.tokenizers import clip_tokenizer  # noqa: E402

EXPORTED_FAMILIES = ("sd1", "sd1-inpaint", "sd2", "sdxl")
COMPONENTS = {
    "sd1": ("unet", "vae", "text_encoder"),
    "sd1-inpaint": ("unet", "vae", "text_encoder"),
    "sd2": ("unet", "vae", "text_encoder"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2"),
}
TEXT_PREFIXES = {
    "sd1": ("cond_stage_model.transformer.text_model.",),
    "sd1-inpaint": ("cond_stage_model.transformer.text_model.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."),
}


def _pipeline_class(family):
    from diffusers import (
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    return {
        "sdxl": StableDiffusionXLPipeline,
        "sd1-inpaint": StableDiffusionInpaintPipeline,
    }.get(family, StableDiffusionPipeline)


@pytest.fixture(scope="module", params=EXPORTED_FAMILIES)
def exported(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(family)
    pipe = build_tiny_pipeline(family, seed=0)
    config = save_tiny_diffusers(root / "diffusers", family, seed=0)
    checkpoint = export_single_file(pipe, root / f"{family}.safetensors")
    return family, pipe, config, checkpoint


def _keys(path):
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys()), f.metadata()


def _generate(pipe, family):
    kwargs = {
        "prompt": "a photo of a cat",
        "num_inference_steps": 1,
        "height": 32,
        "width": 32,
        "output_type": "np",
        "generator": torch.Generator().manual_seed(1),
    }
    if family == "sd1-inpaint":
        kwargs["image"] = Image.new("RGB", (32, 32), (120, 60, 30))
        kwargs["mask_image"] = Image.new("L", (32, 32), 255)
    return pipe(**kwargs).images


def test_exported_file_has_ldm_layout(exported):
    family, _, _, checkpoint = exported
    keys, metadata = _keys(checkpoint)
    assert metadata == {"format": "pt"}
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.time_embed.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.proj_in.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    assert all(
        k.startswith(("model.diffusion_model.", "first_stage_model.", *TEXT_PREFIXES[family]))
        for k in keys
    )
    for prefix in TEXT_PREFIXES[family]:
        assert any(k.startswith(prefix) for k in keys)
    assert not any(".down_blocks." in k or ".resnets." in k for k in keys)
    assert not partial_path(checkpoint).exists()


@pytest.mark.parametrize("exported", ["sd2", "sdxl"], indirect=True)
def test_sdxl_and_sd2_use_open_clip_layout(exported):
    family, pipe, _, checkpoint = exported
    prefix = TEXT_PREFIXES[family][-1]
    with safe_open(str(checkpoint), framework="pt") as f:
        in_proj = f.get_tensor(f"{prefix}transformer.resblocks.0.attn.in_proj_weight")
        assert f"{prefix}positional_embedding" in f.keys()
        if family == "sdxl":
            projection = f.get_tensor(f"{prefix}text_projection")
            expected = pipe.text_encoder_2.text_projection.weight
            assert torch.equal(projection, expected.T)
            assert "model.diffusion_model.label_emb.0.0.weight" in f.keys()
    hidden = in_proj.shape[1]
    assert in_proj.shape == (3 * hidden, hidden)


def test_from_single_file_reads_back_identical_weights(exported):
    family, pipe, config, checkpoint = exported
    loaded = _pipeline_class(family).from_single_file(
        str(checkpoint), config=str(config), local_files_only=True
    )
    for name in COMPONENTS[family]:
        original = getattr(pipe, name).state_dict()
        restored = getattr(loaded, name).state_dict()
        assert restored.keys() == original.keys(), name
        for key, value in original.items():
            assert torch.equal(restored[key], value), f"{name}.{key}"
    assert loaded.vae.config.scaling_factor == pipe.vae.config.scaling_factor
    np.testing.assert_array_equal(_generate(loaded, family), _generate(pipe, family))


def test_export_casts_dtype_and_is_atomic(tmp_path):
    pipe = build_tiny_pipeline("sd1")
    path = export_single_file(pipe, tmp_path / "half.safetensors", dtype=torch.float16)
    with safe_open(str(path), framework="pt") as f:
        assert f.get_tensor("model.diffusion_model.out.2.weight").dtype == torch.float16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.safetensors"]
    with pytest.raises(ValueError):
        export_single_file(pipe, tmp_path / "model.ckpt")


def test_save_tiny_checkpoint_is_deterministic(tmp_path):
    first = save_tiny_checkpoint(tmp_path / "a.safetensors", "sd2-v", seed=3)
    second = save_tiny_checkpoint(tmp_path / "b.safetensors", "sd2-v", seed=3)
    other = save_tiny_checkpoint(tmp_path / "c.safetensors", "sd2-v", seed=4)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_tiny_families_follow_conventions():
    sd2v = build_tiny_pipeline("sd2-v")
    assert sd2v.scheduler.config.prediction_type == "v_prediction"
    assert sd2v.unet.config.use_linear_projection
    inpaint = build_tiny_pipeline("sd1-inpaint")
    assert inpaint.unet.config.in_channels == 9
    sdxl = build_tiny_pipeline("sdxl")
    assert sdxl.unet.config.cross_attention_dim == (
        sdxl.text_encoder.config.hidden_size + sdxl.text_encoder_2.config.hidden_size
    )
    assert sdxl.vae.config.scaling_factor == pytest.approx(0.13025)
    assert sdxl.tokenizer_2.pad_token == "!"
    with pytest.raises(ValueError):
        build_tiny_pipeline("sd3")


def test_clip_tokenizer_matches_openai_vocab():
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tokenizer("a cat", padding="max_length", truncation=True).input_ids
    assert len(padded) == 77 and padded[-1] == 49407
    assert clip_tokenizer(pad_token="!").pad_token_id == 0
