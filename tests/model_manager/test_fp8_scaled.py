"""ComfyUI's "fp8_scaled" files (fp8 weights, a `scale_weight` per layer, the `scaled_fp8`
marker) of the tiny FLUX.1, SD 3.5 and Z-Image models and their T5 / Qwen3 encoders: they
load as checkpoints, their weights stay fp8 in memory, they compute what the full model
computes (within fp8's error: the scales are applied, or the outputs would be hundreds of
times off), and a LoRA changes them as it changes the unscaled fp8 file's model."""

from __future__ import annotations

import pytest
import torch

from tests import tiny_flux_loras as flux_loras
from tests import tiny_zimage_loras as zimage_loras
from tests.tiny_flux_loras import lora_change
from tests.tiny_flux_loras import sd3_transformer_out as sd3_out
from tests.tiny_flux_loras import transformer_out as flux_out
from tests.tiny_scaled_fp8 import write_scaled
from webui.core.families import FLUX1, SD3, default_families
from webui.model_manager import flux_files, flux_keys, fp8_scaled, sd3_keys, tiny_flux, tiny_sd3
from webui.model_manager.identify import UnsupportedModelError
from webui.model_manager.loader import load_checkpoint, read_shapes
from webui.model_manager.tiny_zimage import save_modules as zimage_modules
from webui.model_manager.tiny_zimage import save_transformer as zimage_transformer
from webui.model_manager.weight_storage import (
    parameter_bytes,
    set_compute_dtype,
    storage,
    storage_fields,
)

FAMILIES = default_families()
FP8 = torch.float8_e4m3fn
F32 = torch.float32


def _close(ours: torch.Tensor, reference: torch.Tensor, share: float) -> None:
    assert ours.dtype == F32 and ours.isfinite().all()
    assert (ours - reference).abs().max() < share * reference.abs().max()


# --- FLUX.1 -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    pipe = tiny_flux.build_tiny_flux(seed=0)
    root = tmp_path_factory.mktemp("flux-scaled")
    full = tiny_flux.save_transformer(pipe, root / "flux1-full.safetensors", dtype=F32)
    modules = tiny_flux.save_modules(pipe, root / "modules", dtype=F32)
    return {
        "pipe": pipe,
        "scaled": write_scaled(full, root / "flux1-dev-tiny_fp8_scaled.safetensors"),
        "per-row": write_scaled(full, root / "flux1-rows_fp8_scaled.safetensors", per_row=True),
        "fp8": tiny_flux.save_transformer(pipe, root / "flux1-tiny-fp8.safetensors", dtype=FP8),
        "t5": write_scaled(modules["t5xxl"], root / "t5xxl_fp8_e4m3fn_scaled.safetensors"),
        "modules": [modules["vae"], modules["clip_l"]],
        "kohya": flux_loras.write_kohya(
            root / "kohya.safetensors", flux_loras.bfl_pairs(pipe.transformer)
        ),  # fmt: skip
    }


def _flux_transformer(path):
    config = flux_keys.transformer_config(read_shapes(path), "")
    return flux_files.build_transformer(config, flux_files.read_state(path, ""), F32)


@pytest.mark.parametrize("kind", ["scaled", "per-row"])
def test_flux_scaled_transformer_stays_fp8_and_computes_as_the_full_model(flux, kind):
    model, full = _flux_transformer(flux[kind]), flux["pipe"].transformer
    to_q = model.transformer_blocks[0].attn.to_q  # a third of the fused qkv, its rows' scales
    assert to_q.weight.dtype == FP8 and storage(model) == "fp8_e4m3fn"
    scale = fp8_scaled.scale_of(to_q)
    assert scale is not None and scale.numel() == (to_q.out_features if kind == "per-row" else 1)
    assert parameter_bytes(model) < 0.3 * parameter_bytes(full)
    _close(flux_out(model), flux_out(full), 0.1)
    assert to_q.weight.dtype == FP8  # put back after the call


def test_a_scaled_layer_computes_in_the_dtype_it_is_set_to(flux):
    model, full = _flux_transformer(flux["per-row"]), flux["pipe"].transformer
    set_compute_dtype(model, torch.bfloat16)  # the CPU's bf16 decision (`cpu_precision`)
    to_q, reference = model.transformer_blocks[0].attn.to_q, full.transformer_blocks[0].attn.to_q
    x = torch.randn(3, to_q.in_features)
    with torch.no_grad():
        out = to_q(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and to_q.weight.dtype == FP8
    _close(out.float(), reference(x), 0.1)


def test_flux_scaled_checkpoint_with_the_scaled_t5(flux):
    model = load_checkpoint(flux["scaled"], "cpu", F32, FAMILIES, [*flux["modules"], flux["t5"]])
    pipe, original = model.pipe, flux["pipe"]
    assert model.spec.family == "flux1"
    assert storage_fields(pipe) == {"Weight storage": "transformer fp8_e4m3fn, t5xxl fp8_e4m3fn"}
    t5 = pipe.text_encoder_2
    assert t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == FP8
    # fp8 weights; the tiny model's norms and `wo` (kept wide by T5's class) weigh the rest
    assert parameter_bytes(t5.encoder.block) < 0.45 * parameter_bytes(original.text_encoder_2.encoder.block)  # fmt: skip
    ids = torch.tensor([[3, 9, 1131, 123, 346, 1]])
    with torch.no_grad():
        _close(t5(ids)[0], original.text_encoder_2(ids)[0], 0.15)
    _close(flux_out(pipe.transformer), flux_out(original.transformer), 0.1)


def test_a_lora_on_the_scaled_model_acts_as_on_the_plain_fp8_one(flux):
    changes = {}
    for kind in ("scaled", "fp8"):
        pipe = tiny_flux.build_tiny_flux(seed=0)
        pipe.transformer = _flux_transformer(flux[kind])
        changes[kind] = lora_change(pipe, FLUX1, flux["kohya"])
        to_q = pipe.transformer.transformer_blocks[0].attn.to_q
        assert to_q.base_layer.weight.dtype == FP8 and to_q.lora_A["kohya"].weight.dtype == F32
    assert changes["scaled"].abs().max() > 0.1
    _close(changes["scaled"], changes["fp8"], 0.15)


# --- SD 3.5 -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    pipe = tiny_sd3.build_tiny_sd3(seed=0, medium=True)
    root = tmp_path_factory.mktemp("sd3-scaled")
    full = tiny_sd3.save_transformer(pipe, root / "sd3.5-full.safetensors", dtype=F32)
    modules = tiny_sd3.save_modules(pipe, root / "modules", dtype=F32)
    return {
        "pipe": pipe,
        "scaled": write_scaled(full, root / "sd3.5_medium_fp8_scaled.safetensors", per_row=True),
        "modules": [modules[k] for k in ("vae", "clip_l", "clip_g")]
        + [write_scaled(modules["t5xxl"], root / "t5xxl_fp8_e4m3fn_scaled.safetensors")],
        "kohya": flux_loras.write_kohya(
            root / "kohya.safetensors", flux_loras.stability_pairs(pipe)
        ),  # fmt: skip
    }


def test_sd3_scaled_checkpoint_stays_fp8_computes_and_takes_a_lora(sd3):
    model = load_checkpoint(sd3["scaled"], "cpu", F32, FAMILIES, sd3["modules"])
    pipe, original = model.pipe, sd3["pipe"]
    assert model.spec.family == "sd3"
    assert storage_fields(pipe) == {"Weight storage": "transformer fp8_e4m3fn, t5xxl fp8_e4m3fn"}
    full = original.transformer
    assert parameter_bytes(pipe.transformer) < 0.45 * parameter_bytes(full)
    _close(sd3_out(pipe.transformer), sd3_out(full), 0.1)
    assert lora_change(pipe, SD3, sd3["kohya"], sd3_out).abs().max() > 0.1


def test_sd3_layout_reads_the_scaled_file(sd3):
    shapes = read_shapes(sd3["scaled"])
    prefix = sd3_keys.SD3Layout.of(shapes).transformer
    config = sd3_keys.transformer_config(shapes, prefix)
    assert config["num_layers"] == sd3["pipe"].transformer.config.num_layers


# --- Z-Image ------------------------------------------------------------------------------
def test_zimage_scaled_transformer_and_qwen3(zimage_files, tmp_path):
    original = zimage_files["pipe"]
    full = zimage_transformer(original, tmp_path / "z-full.safetensors", dtype=F32)
    qwen3 = zimage_modules(original, tmp_path / "modules", dtype=F32)["qwen3"]
    scaled = write_scaled(full, tmp_path / "z_image_turbo_fp8_scaled.safetensors")
    qwen3 = write_scaled(qwen3, tmp_path / "qwen_3_4b_fp8_scaled.safetensors", per_row=True)
    pipe = load_checkpoint(scaled, "cpu", F32, FAMILIES, [zimage_files["vae"], qwen3]).pipe
    assert storage_fields(pipe) == {"Weight storage": "transformer fp8_e4m3fn, qwen3 fp8_e4m3fn"}
    transformer = pipe.transformer
    assert transformer.layers[0].attention.to_q.weight.dtype == FP8
    # kept wide (it casts its input to its weight's dtype): the true weight, scale applied
    embedder, reference = transformer.t_embedder.mlp[0], original.transformer.t_embedder.mlp[0]
    assert embedder.weight.dtype == F32
    _close(embedder.weight, reference.weight, 0.1)
    out = zimage_loras.transformer_out(transformer)
    _close(out, zimage_loras.transformer_out(original.transformer), 0.1)
    ids = torch.tensor([[151644, 872, 198, 64, 8251]])
    with torch.no_grad():
        ours = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        theirs = original.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    _close(ours, theirs, 0.15)


# --- all-in-one files: transformer, autoencoder and text encoders scaled ------------------
@pytest.mark.parametrize("family", ["flux1", "sd3"])
def test_a_scaled_all_in_one_checkpoint_generates_as_the_original(flux, sd3, family, tmp_path):
    original = flux["pipe"] if family == "flux1" else sd3["pipe"]
    module = tiny_flux if family == "flux1" else tiny_sd3
    full = module.save_all_in_one(original, tmp_path / "full.safetensors", dtype=F32)
    path = write_scaled(full, tmp_path / f"{family}-aio_fp8_scaled.safetensors", per_row=True)
    model = load_checkpoint(path, "cpu", F32, FAMILIES, ())
    assert model.spec.family == family and model.spec.missing == ()
    pipe = model.pipe
    fields = storage_fields(pipe)["Weight storage"]
    assert "transformer fp8_e4m3fn" in fields and "clip_l fp8_e4m3fn" in fields

    def picture(p):
        return p(prompt="a cat", num_inference_steps=2, height=32, width=32,
                 generator=torch.Generator().manual_seed(1), output_type="np",
                 max_sequence_length=16).images  # fmt: skip

    ours, theirs = picture(pipe), picture(original)
    assert abs(ours - theirs).max() < 0.1 and abs(ours - theirs).mean() < 0.02


# --- what is refused ----------------------------------------------------------------------
def test_other_quantized_layouts_and_broken_scales_are_refused():
    weight = torch.zeros(4, 3).to(FP8)
    with pytest.raises(UnsupportedModelError, match="NVFP4"):
        fp8_scaled.take_scales({"a.weight": weight, "a.weight_scale_2": torch.ones(())})
    nvfp4 = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    with pytest.raises(UnsupportedModelError, match="ComfyUI nvfp4"):
        fp8_scaled.take_scales({"a.weight": weight, "a.comfy_quant": nvfp4})
    with pytest.raises(UnsupportedModelError, match="2 values for 4 rows"):
        fp8_scaled.take_scales({"a.weight": weight, "a.scale_weight": torch.ones(2)})
    with pytest.raises(UnsupportedModelError, match="no weight"):
        fp8_scaled.take_scales({"b.weight": weight, "a.scale_weight": torch.ones(())})


def test_newer_comfyui_files_weight_scale_and_an_fp8_comfy_quant_config():
    fp8 = torch.tensor(list(b'{"format": "float8_e4m3fn"}'), dtype=torch.uint8)
    weight = torch.ones(2, 3).to(FP8)
    weights, scales = fp8_scaled.take_scales({
        "a.weight": weight, "a.weight_scale": torch.tensor(0.25), "a.input_scale": torch.tensor(1.0),
        "a.comfy_quant": fp8, "a.bias": torch.zeros(2),
    })  # fmt: skip
    assert set(weights) == {"a.weight", "a.bias"} and torch.equal(scales["a"], torch.tensor(0.25))


def test_a_scale_on_a_wide_weight_is_folded_in_and_the_input_scale_dropped():
    weights, scales = fp8_scaled.take_scales({
        "a.weight": torch.ones(2, 2), "a.scale_weight": torch.tensor(0.5),
        "a.scale_input": torch.tensor(3.0), "scaled_fp8": torch.empty(0, dtype=FP8),
    })  # fmt: skip
    assert scales == {} and list(weights) == ["a.weight"]
    assert torch.equal(weights["a.weight"], torch.full((2, 2), 0.5))
    conv = torch.ones(2, 1, 3, 3).to(FP8)  # the autoencoder's: folded, per output channel
    state = fp8_scaled.folded({"c.weight": conv, "c.scale_weight": torch.tensor([2.0, 0.5])})
    assert state["c.weight"][0].eq(2.0).all() and state["c.weight"][1].eq(0.5).all()
