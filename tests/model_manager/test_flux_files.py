"""FLUX.1 files: recognition from the tensors, offline loading of every layout (BFL
transformer-only with separate modules, all-in-one, diffusers folder), the missing-module
message, the shipped T5 tokenizer, and diffusers 0.42's two single-file traps."""

from __future__ import annotations

import pytest
import torch

from webui.core.families import default_families
from webui.model_manager import flux_files as ff
from webui.model_manager import flux_keys as fk
from webui.model_manager.loader import (
    MissingModuleError,
    identify_file,
    load_checkpoint,
    read_shapes,
)
from webui.model_manager.tokenizers import t5_tokenizer

FAMILIES = default_families()


def _modules(files: dict) -> list:
    return [files[k] for k in ("vae", "clip_l", "t5xxl")]


def _same_weights(loaded: torch.nn.Module, original: torch.nn.Module, atol: float = 0.0) -> None:
    ours, theirs = loaded.state_dict(), original.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.allclose(ours[key].float(), value.float(), atol=atol), key


def test_t5_tokenizer_is_t5_v1_1s_and_offline():
    tokenizer = t5_tokenizer()
    assert len(tokenizer) == 32100
    assert tokenizer("hello world").input_ids == [21820, 296, 1]  # T5's own ids
    padded = tokenizer("a photo", padding="max_length", max_length=6).input_ids
    assert padded == [3, 9, 1202, 1, 0, 0]


def test_sizes_come_from_the_tensors(flux_files):
    spec = identify_file(flux_files["transformer"], FAMILIES)
    assert (spec.family, spec.family_label, spec.prediction_type) == ("flux1", "FLUX.1", "flow")
    assert spec.unet["num_attention_heads"] * spec.unet["attention_head_dim"] == 64  # not 3072
    assert (spec.unet["num_layers"], spec.unet["num_single_layers"]) == (1, 1)
    assert spec.unet["joint_attention_dim"] == 32 and spec.unet["guidance_embeds"] is True
    assert spec.missing == ("vae", "clip_l", "t5xxl")
    schnell = identify_file(flux_files["schnell"], FAMILIES)
    assert schnell.family_label == "FLUX.1 schnell" and not schnell.unet["guidance_embeds"]
    whole = identify_file(flux_files["all-in-one"], FAMILIES)
    assert whole.missing == () and whole.vae["latent_channels"] == 16
    assert whole.text_encoders[1]["d_model"] == 32
    prefixed = identify_file(flux_files["transformer-prefixed"], FAMILIES)
    assert prefixed.missing == ("vae", "clip_l", "t5xxl")


def test_module_files_are_told_apart(flux_files):
    kinds = {k: fk.module_kind(read_shapes(flux_files[k])) for k in ("vae", "clip_l", "t5xxl")}
    assert kinds == {"vae": "vae", "clip_l": "clip_l", "t5xxl": "t5xxl"}
    assert fk.module_kind(read_shapes(flux_files["transformer"])) is None


@pytest.mark.parametrize("layout", ["all-in-one", "transformer-prefixed", "diffusers"])
def test_every_layout_loads_offline_with_the_same_weights(flux_files, layout):
    modules = _modules(flux_files) if layout == "transformer-prefixed" else ()
    model = load_checkpoint(flux_files[layout], "cpu", torch.float32, FAMILIES, modules)
    original = flux_files["pipe"]
    assert type(model.pipe).__name__ == "FluxPipeline" and model.spec.family == "flux1"
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        _same_weights(getattr(model.pipe, name), getattr(original, name))
    assert model.pipe.scheduler.config.use_dynamic_shifting  # dev: FLUX.1's shifted schedule


def test_transformer_file_with_modules_generates_as_the_original(flux_files):
    """A fp16 BFL file with ae / clip_l / t5xxl module files: the same picture as the
    pipeline it was written from (fp16 storage: a small tolerance)."""
    model = load_checkpoint(flux_files["transformer"], "cpu", torch.float32, FAMILIES,
                            _modules(flux_files))  # fmt: skip

    def picture(pipe):
        return pipe(prompt="a cat", num_inference_steps=1, height=32, width=32,
                    generator=torch.Generator().manual_seed(1), output_type="np",
                    max_sequence_length=16).images  # fmt: skip

    assert abs(picture(model.pipe) - picture(flux_files["pipe"])).max() < 2e-3


def test_a_missing_module_is_named_with_its_file_and_folder(flux_files):
    with pytest.raises(MissingModuleError) as caught:
        load_checkpoint(flux_files["transformer"], "cpu", torch.float32, FAMILIES,
                        [flux_files["vae"], flux_files["clip_l"]])  # fmt: skip
    message = str(caught.value)
    assert "flux1-tiny.safetensors" in message and "T5-XXL" in message
    assert "t5xxl_fp16.safetensors" in message and "models/text_encoder" in message
    assert "autoencoder" not in message  # the chosen VAE was found


def test_trap_diffusers_splits_linear1_at_3072(flux_files):
    """diffusers 0.42's converter splits single_blocks.N.linear1 at FLUX.1's width: our
    tiny width-64 file fails there, and loads through `flux_files.transformer_state`."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    state = ff.read_state(flux_files["transformer"], "")
    with pytest.raises(RuntimeError):
        convert_flux_transformer_checkpoint_to_diffusers(dict(state))
    converted = ff.transformer_state(state, width=64)
    assert converted["single_transformer_blocks.0.attn.to_q.weight"].shape == (64, 64)
    assert converted["single_transformer_blocks.0.proj_mlp.weight"].shape == (256, 64)


def test_trap_t5_embed_tokens_is_tied_to_shared(flux_files):
    """t5xxl_fp16.safetensors has `shared.weight` only: the encoder's token embedding must
    be that tensor (diffusers 0.42 leaves it unfilled)."""
    assert "encoder.embed_tokens.weight" not in read_shapes(flux_files["t5xxl"])
    shapes = read_shapes(flux_files["t5xxl"])
    t5 = ff.build_t5(fk.t5_config(shapes, ""), ff.read_state(flux_files["t5xxl"], ""),
                     torch.float32)  # fmt: skip
    assert t5.encoder.embed_tokens.weight is t5.shared.weight
    ids = torch.tensor([[21820, 296, 1]])
    original = flux_files["pipe"].text_encoder_2
    with torch.no_grad():
        assert torch.equal(t5(ids).last_hidden_state, original(ids).last_hidden_state)


def test_sd_checkpoints_are_still_identified_as_before(tiny_files):
    assert identify_file(tiny_files["sd1"], FAMILIES).family == "sd1"
    assert identify_file(tiny_files["sdxl"], FAMILIES).family == "sdxl"
