"""Z-Image files as users have them besides the bf16 transformer: ComfyUI-GGUF's Q8_0 file
(kept quantized), fp8 transformer and Qwen3 files (kept fp8), and ComfyUI's all-in-one
checkpoint (transformer, FLUX autoencoder and Qwen3 in one file, no module needed); each
computes what the original model computes, LoRA works on the quantized ones, and the
header names the family."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests import tiny_zimage_loras as loras
from webui.core.families import default_families
from webui.core.families.zimage import ZIMAGE
from webui.model_manager import flux_gguf
from webui.model_manager import zimage_keys as zk
from webui.model_manager.loader import (
    identify_file,
    load_checkpoint,
    read_shapes,
)
from webui.model_manager.sniff import gguf_family, sniff_file
from webui.model_manager.tiny_zimage import (
    save_all_in_one,
    save_gguf,
    save_modules,
    save_transformer,
)
from webui.model_manager.weight_storage import parameter_bytes, storage, storage_fields

FAMILIES = default_families()
FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def files(tmp_path_factory, zimage_files):
    pipe = zimage_files["pipe"]
    root = tmp_path_factory.mktemp("zimage-storage")
    return {
        "pipe": pipe,
        "gguf": save_gguf(pipe, root / "z_image_turbo-Q8_0.gguf"),
        "fp8": save_transformer(pipe, root / "z_image_turbo_fp8_e4m3fn.safetensors", dtype=FP8),
        "aio": save_all_in_one(pipe, root / "z-image-aio.safetensors", dtype=torch.float32),
        "qwen3-fp8": save_modules(pipe, root / "fp8-modules", dtype=FP8)["qwen3"],
        "modules": [zimage_files["vae"], zimage_files["qwen3"]],
        "lora": loras.write_kohya(root / "kohya.safetensors", loras.pairs(pipe.transformer), 2.0),
    }


def _load(files, name, modules=None):
    modules = files["modules"] if modules is None else modules
    return load_checkpoint(files[name], "cpu", torch.float32, FAMILIES, modules)


@pytest.fixture(scope="module")
def gguf_model(files):
    return _load(files, "gguf")


@pytest.fixture(scope="module")
def fp8_model(files):
    return _load(files, "fp8", [files["modules"][0], files["qwen3-fp8"]])


def _close(ours: torch.Tensor, reference: torch.Tensor, share: float) -> None:
    assert ours.dtype == torch.float32
    assert (ours - reference).abs().max() < share * reference.abs().max()


def test_a_gguf_file_is_identified_and_stays_quantized(files, gguf_model):
    spec = identify_file(files["gguf"], FAMILIES)
    assert (spec.family, spec.unet["dim"], spec.missing) == ("zimage", 32, ("vae", "qwen3"))
    model = gguf_model
    transformer = model.pipe.transformer
    assert flux_gguf.quant_types(transformer)["Q8_0"] >= 10
    assert storage(transformer) == "GGUF Q8_0"
    assert storage_fields(model.pipe) == {"Weight storage": "transformer GGUF Q8_0"}
    assert transformer.x_pad_token.shape == (1, 32)  # quantized in the file: dequantized
    full = files["pipe"].transformer
    assert parameter_bytes(transformer) < 0.6 * parameter_bytes(full)
    _close(loras.transformer_out(transformer), loras.transformer_out(full), 0.05)
    assert gguf_family(files["gguf"]) == "Z-Image"


def test_lora_on_the_gguf_and_the_fp8_transformer(files, gguf_model, fp8_model):
    for name, model in (("gguf", gguf_model), ("fp8", fp8_model)):
        pipe = model.pipe
        base = loras.transformer_out(pipe.transformer)
        ZIMAGE.load_lora(pipe, load_file(str(files["lora"])), "kohya")
        pipe.set_adapters(["kohya"], [1.0])
        assert (loras.transformer_out(pipe.transformer) - base).abs().max() > 0.05, name
        assert storage(pipe.transformer) in ("GGUF Q8_0", "fp8_e4m3fn")  # still narrow
        pipe.set_adapters(["kohya"], [0.0])
        assert torch.equal(loras.transformer_out(pipe.transformer), base), name
        pipe.delete_adapters(["kohya"])


def test_fp8_transformer_and_qwen3_stay_fp8(files, fp8_model):
    pipe, original = fp8_model.pipe, files["pipe"]
    assert pipe.transformer.layers[0].attention.to_q.weight.dtype == FP8
    # its timestep embedder casts its input to its weight's dtype: kept wide (diffusers' list)
    assert pipe.transformer.t_embedder.mlp[0].weight.dtype == torch.float32
    # the blocks: fp8 weights, wide norms (the tiny model's timestep embedder, kept wide,
    # outweighs its blocks; in Z-Image's 6 B it is 0.5 M)
    assert parameter_bytes(pipe.transformer.layers) < 0.35 * parameter_bytes(original.transformer.layers)  # fmt: skip
    _close(
        loras.transformer_out(pipe.transformer), loras.transformer_out(original.transformer), 0.1
    )
    assert storage_fields(pipe) == {"Weight storage": "transformer fp8_e4m3fn, qwen3 fp8_e4m3fn"}
    ids = torch.tensor([[151644, 872, 198, 64, 8251]])
    with torch.no_grad():
        ours = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        theirs = original.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    _close(ours, theirs, 0.15)


def test_the_all_in_one_checkpoint_needs_no_module_and_generates_as_the_original(files):
    shapes = read_shapes(files["aio"])
    assert zk.layout(shapes) == {"transformer": "model.diffusion_model.", "vae": "vae.",
                                 "qwen3": "text_encoders.qwen3_4b.transformer.model."}  # fmt: skip
    spec = identify_file(files["aio"], FAMILIES)
    assert spec.family == "zimage" and spec.missing == ()
    assert spec.text_encoders[0]["hidden_size"] == 32 and spec.vae["latent_channels"] == 16
    assert sniff_file(files["aio"]).family == "Z-Image"
    pipe = _load(files, "aio", modules=()).pipe

    def picture(p):
        return p(prompt="a cat", num_inference_steps=2, height=32, width=32,
                 guidance_scale=0.0, generator=torch.Generator().manual_seed(1),
                 output_type="np", max_sequence_length=32).images  # fmt: skip

    assert abs(picture(pipe) - picture(files["pipe"])).max() < 1e-4
    qwen = ZIMAGE.text_encoder_from_file(files["aio"], spec, (), "text_encoder", torch.float32)
    assert torch.equal(qwen.embed_tokens.weight, files["pipe"].text_encoder.embed_tokens.weight)
