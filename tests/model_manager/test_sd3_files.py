"""SD 3.5 files: recognition from the tensors (Medium, Large, partial files), offline
loading of every layout (all-in-one, transformer-only with separate modules, without the
text encoders, diffusers folder), CLIP-L and CLIP-G told apart by width, the
missing-module message, and diffusers' SD 3 converter at a tiny width."""

from __future__ import annotations

import pytest
import torch

from webui.core.families import default_families
from webui.model_manager import sd3_keys as sk
from webui.model_manager.loader import (
    MissingModuleError,
    identify_file,
    load_checkpoint,
    read_shapes,
)

FAMILIES = default_families()
MODULES = ("sd3_vae", "clip_l", "clip_g", "t5xxl")
COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


def _modules(files: dict, kinds=("vae", "clip_l", "clip_g", "t5xxl")) -> list:
    return [files[k] for k in reversed(kinds)]  # any order: told apart by their tensors


def _same_weights(loaded: torch.nn.Module, original: torch.nn.Module, atol: float = 0.0) -> None:
    ours, theirs = loaded.state_dict(), original.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.allclose(ours[key].float(), value.float(), atol=atol), key


def test_sizes_come_from_the_tensors(sd3_files):
    spec = identify_file(sd3_files["all-in-one"], FAMILIES)
    assert (spec.family, spec.family_label, spec.prediction_type) == (
        "sd3",
        "SD 3.5 Medium",
        "flow",
    )
    assert spec.unet["num_attention_heads"] * spec.unet["attention_head_dim"] == 64
    assert spec.unet["num_layers"] == 2 and spec.unet["dual_attention_layers"] == [0]
    assert spec.unet["pooled_projection_dim"] == 96 and spec.unet["joint_attention_dim"] == 128
    assert spec.unet["pos_embed_max_size"] == 16 and spec.unet["qk_norm"] == "rms_norm"
    assert spec.missing == () and spec.vae["latent_channels"] == 16
    assert [c.get("hidden_size", c.get("d_model")) for c in spec.text_encoders] == [32, 64, 128]
    large = identify_file(sd3_files["no-encoders"], FAMILIES)
    assert large.family_label == "SD 3.5 Large" and large.unet["dual_attention_layers"] == []
    assert large.missing == ("clip_l", "clip_g", "t5xxl")
    alone = identify_file(sd3_files["transformer"], FAMILIES)
    assert alone.missing == ("vae", "clip_l", "clip_g", "t5xxl")


def test_module_files_are_told_apart_by_their_tensors(sd3_files):
    pooled = 96  # the transformer's: CLIP-L's 32 + CLIP-G's 64
    kinds = {k: sk.module_kind(read_shapes(sd3_files[k]), pooled)
             for k in ("vae", "clip_l", "clip_g", "t5xxl")}  # fmt: skip
    assert kinds == {"vae": "vae", "clip_l": "clip_l", "clip_g": "clip_g", "t5xxl": "t5xxl"}
    assert sk.module_kind(read_shapes(sd3_files["transformer"]), pooled) is None
    real = {"text_model.final_layer_norm.weight": (768,),
            "text_model.embeddings.token_embedding.weight": (49408, 768)}  # fmt: skip
    assert sk.module_kind(real, 2048) == "clip_l"
    real["text_model.embeddings.token_embedding.weight"] = (49408, 1280)
    assert sk.module_kind(real, 2048) == "clip_g"


@pytest.mark.parametrize("layout", ["all-in-one", "transformer", "diffusers"])
def test_every_layout_loads_offline_with_the_same_weights(sd3_files, layout):
    modules = _modules(sd3_files) if layout == "transformer" else ()
    model = load_checkpoint(sd3_files[layout], "cpu", torch.float32, FAMILIES, modules)
    assert type(model.pipe).__name__ == "StableDiffusion3Pipeline" and model.spec.family == "sd3"
    atol = 1e-3 if layout == "transformer" else 0.0  # the fp16 file
    _same_weights(model.pipe.transformer, sd3_files["pipe"].transformer, atol)
    for name in COMPONENTS[1:]:
        _same_weights(getattr(model.pipe, name), getattr(sd3_files["pipe"], name))
    assert model.pipe.scheduler.config.shift == 3.0
    assert not model.pipe.scheduler.config.use_dynamic_shifting


def test_a_file_without_text_encoders_takes_them_from_modules(sd3_files):
    encoders = _modules(sd3_files, ("clip_l", "clip_g", "t5xxl"))
    model = load_checkpoint(sd3_files["no-encoders"], "cpu", torch.float32, FAMILIES, encoders)
    _same_weights(model.pipe.transformer, sd3_files["large"].transformer)
    _same_weights(model.pipe.vae, sd3_files["large"].vae)
    _same_weights(model.pipe.text_encoder_2, sd3_files["pipe"].text_encoder_2)
    assert [p.name for p in model.modules] == [p.name for p in encoders]


def test_the_all_in_one_file_generates_as_the_original(sd3_files):
    model = load_checkpoint(sd3_files["all-in-one"], "cpu", torch.float32, FAMILIES)

    def picture(pipe):
        return pipe(prompt="a cat", negative_prompt="a dog", num_inference_steps=1, height=32,
                    width=32, guidance_scale=4.0, generator=torch.Generator().manual_seed(1),
                    output_type="np", max_sequence_length=16).images  # fmt: skip

    assert abs(picture(model.pipe) - picture(sd3_files["pipe"])).max() < 1e-5


def test_a_missing_module_is_named_with_its_file_and_folder(sd3_files):
    with pytest.raises(MissingModuleError) as caught:
        load_checkpoint(sd3_files["transformer"], "cpu", torch.float32, FAMILIES,
                        [sd3_files["vae"], sd3_files["clip_l"], sd3_files["t5xxl"]])  # fmt: skip
    message = str(caught.value)
    assert "sd3.5-tiny-dit.safetensors" in message and "CLIP-G" in message
    assert "clip_g.safetensors" in message and "models/text_encoder" in message
    assert "CLIP-L" not in message and "T5" not in message


def test_diffusers_sd3_converter_works_at_a_tiny_width(sd3_files):
    """diffusers 0.42's SD 3 converter splits in thirds and reads the dual attention
    layers from the keys: our width-64 Medium file converts (the FLUX one does not)."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from webui.model_manager.sd3_files import read_state

    state = read_state(sd3_files["all-in-one"], sk.DIFFUSION_PREFIX)
    converted = convert_sd3_transformer_checkpoint_to_diffusers(dict(state))
    assert converted["transformer_blocks.0.attn2.to_q.weight"].shape == (64, 64)
    assert converted.keys() == sd3_files["pipe"].transformer.state_dict().keys()
