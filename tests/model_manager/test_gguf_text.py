"""GGUF text encoders (city96's T5-XXL encoder files, Qwen3 GGUFs) on tiny models written in
llama.cpp's names by the gguf package: told apart by their headers, listed as modules,
built with their linear weights still quantized, and encoding prompts as the same model
dequantized does (and close to the full-precision encoder)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from diffusers.quantizers.gguf.utils import GGUFLinear

from tests.tiny_gguf_text import write_qwen3, write_t5
from webui.model_manager import (
    flux_files,
    flux_keys,
    gguf_names,
    gguf_text,
    zimage_files,
    zimage_keys,
)
from webui.model_manager.flux_gguf import quant_types
from webui.model_manager.loader import read_shapes
from webui.model_manager.modules import ModuleFiles, module_kinds
from webui.model_manager.sniff import gguf_family
from webui.model_manager.weight_storage import set_compute_dtype, storage


@pytest.fixture(scope="module")
def files(tmp_path_factory, flux_files, zimage_files):
    root = tmp_path_factory.mktemp("gguf-text")
    return {
        "t5": write_t5(flux_files["pipe"].text_encoder_2, root / "t5-v1_1-xxl-encoder-Q8_0.gguf"),
        "qwen3": write_qwen3(zimage_files["pipe"].text_encoder, root / "Qwen3-4B-Q8_0.gguf"),
        "t5_pipe": flux_files["pipe"],
        "qwen3_pipe": zimage_files["pipe"],
    }


def _t5(path, dtype=torch.float32):
    shapes = read_shapes(path)
    return flux_files.build_t5(flux_keys.t5_config(shapes, ""), flux_files.read_state(path, ""),
                               dtype)  # fmt: skip


def _qwen3(path, dtype=torch.float32):
    shapes = read_shapes(path)
    state = flux_files.read_state(path, zimage_keys.qwen3_prefix(shapes))
    return zimage_files.build_qwen3(zimage_keys.qwen3_config(shapes), state, "", dtype)


def _dequantized_state(path) -> dict[str, torch.Tensor]:
    """The file's tensors dequantized by the gguf package itself, in transformers' names."""
    from gguf import GGUFReader, quants

    reader = GGUFReader(str(path))
    arch = gguf_names.architecture(reader)
    return {
        gguf_names.hf_name(arch, t.name): torch.from_numpy(
            np.ascontiguousarray(quants.dequantize(t.data, t.tensor_type)).astype(np.float32)
        ).reshape(tuple(int(n) for n in reversed(t.shape.tolist())))
        for t in reader.tensors
    }


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_llama_cpp_names_become_transformers_names():
    assert gguf_names.hf_name("t5encoder", "enc.blk.3.attn_rel_b.weight") == (
        "encoder.block.3.layer.0.SelfAttention.relative_attention_bias.weight")  # fmt: skip
    assert gguf_names.hf_name("t5encoder", "enc.blk.0.ffn_gate.weight") == (
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight")  # fmt: skip
    assert gguf_names.hf_name("t5encoder", "enc.output_norm.weight") == (
        "encoder.final_layer_norm.weight")  # fmt: skip
    assert gguf_names.hf_name("t5encoder", "token_embd.weight") == "shared.weight"
    assert gguf_names.hf_name("qwen3", "blk.2.attn_k_norm.weight") == (
        "model.layers.2.self_attn.k_norm.weight")  # fmt: skip
    assert gguf_names.hf_name("qwen3", "blk.0.ffn_norm.weight") == (
        "model.layers.0.post_attention_layernorm.weight")  # fmt: skip
    assert gguf_names.hf_name("qwen3", "output_norm.weight") == "model.norm.weight"
    assert gguf_names.hf_name("t5encoder", "dec.blk.0.attn_q.weight") == "dec.blk.0.attn_q.weight"


def test_headers_tell_the_kind_and_the_module_list_shows_them(files, tmp_path):
    folder = tmp_path / "text_encoders"
    folder.mkdir()
    for name in ("t5", "qwen3"):
        shutil.copy(files[name], folder / files[name].name)
    listed = ModuleFiles([folder])
    assert listed.names() == ["Qwen3-4B-Q8_0.gguf", "t5-v1_1-xxl-encoder-Q8_0.gguf"]
    paths = listed.resolve(listed.names())
    assert module_kinds(paths) == {"qwen3": paths[0], "t5xxl": paths[1]}
    assert gguf_family(files["t5"]) == "T5-XXL (FLUX, SD 3)"
    assert gguf_family(files["qwen3"]) == "Qwen3 (Z-Image)"
    config = flux_keys.t5_config(read_shapes(files["t5"]), "")
    reference = files["t5_pipe"].text_encoder_2.config
    assert (config["num_layers"], config["num_heads"], config["d_kv"], config["d_ff"]) == (
        reference.num_layers, reference.num_heads, reference.d_kv, reference.d_ff)  # fmt: skip


@torch.no_grad()
def test_t5_stays_quantized_and_encodes_like_the_full_encoder(files):
    pipe = files["t5_pipe"]
    model = _t5(files["t5"])
    assert quant_types(model) == {"Q8_0": 15}  # the embedding; q, k, v, o, wi_0, wi_1, wo x 2
    assert isinstance(model.encoder.block[0].layer[1].DenseReluDense.wo, GGUFLinear)
    assert storage(model) == "GGUF Q8_0"
    assert isinstance(model.shared, gguf_text.GGUFEmbedding)
    assert model.encoder.embed_tokens is model.shared
    ids = pipe.tokenizer_2("a red cube on a table", return_tensors="pt").input_ids
    plain = flux_files.build_t5(flux_keys.t5_config(read_shapes(files["t5"]), ""),
                                _dequantized_state(files["t5"]), torch.float32)  # fmt: skip
    out = model(ids)[0]
    torch.testing.assert_close(out, plain(ids)[0], atol=3e-3, rtol=1e-2)  # diffusers: Q8_0 in fp16
    assert _cosine(out, pipe.text_encoder_2(ids)[0]) > 0.99
    half = _t5(files["t5"], torch.bfloat16)(ids)[0]  # computed in bf16, wo too
    assert half.dtype == torch.bfloat16 and _cosine(half.float(), out) > 0.99
    set_compute_dtype(model, torch.bfloat16)  # the CPU's bf16 decision, on the loaded model
    assert torch.equal(model(ids)[0], half) and quant_types(model) == {"Q8_0": 15}


@torch.no_grad()
def test_qwen3_stays_quantized_and_encodes_like_the_full_encoder(files):
    pipe = files["qwen3_pipe"]
    model = _qwen3(files["qwen3"])
    assert quant_types(model) == {"Q8_0": 15}  # the embedding; q, k, v, o, gate, up, down x 2
    assert isinstance(model.embed_tokens, gguf_text.GGUFEmbedding)
    ids = pipe.tokenizer("a red cube on a table", return_tensors="pt").input_ids
    shapes = read_shapes(files["qwen3"])
    plain = zimage_files.build_qwen3(zimage_keys.qwen3_config(shapes),
                                     _dequantized_state(files["qwen3"]), "model.",
                                     torch.float32)  # fmt: skip
    out = model(ids).last_hidden_state
    torch.testing.assert_close(
        out, plain(ids).last_hidden_state, atol=3e-3, rtol=1e-2
    )  # diffusers: Q8_0 in fp16
    assert _cosine(out, pipe.text_encoder(ids).last_hidden_state) > 0.99


def test_missing_messages_name_the_gguf_files():
    assert "t5-v1_1-xxl-encoder-Q8_0.gguf" in flux_keys.missing_message("f.gguf", ["t5xxl"])
    assert "Qwen3-4B-Q8_0.gguf" in zimage_keys.missing_message("z.gguf", ["qwen3"])


def test_a_t5_lora_on_the_gguf_t5(files, tmp_path):
    """kohya's `lora_te2_` layers on the quantized T5: the same change as on the full T5."""
    from tests import tiny_encoder_loras as te
    from webui.core.families import FLUX1
    from webui.core.prompts import LoraRequest
    from webui.model_manager.lora import LoraManager
    from webui.model_manager.network_files import AddnetHashCache
    from webui.model_manager.registry import HashCache
    from webui.model_manager.tiny_flux import build_tiny_flux

    pipe = build_tiny_flux(seed=0)
    folder = tmp_path / "Lora"
    folder.mkdir()
    te.write(
        folder / "t5.safetensors", te.encoder_state(pipe.text_encoder_2, "lora_te2_", kohya=True)
    )
    manager = LoraManager(
        folder, HashCache(tmp_path / "c.json"), AddnetHashCache(tmp_path / "a.json")
    )
    ids = torch.tensor([[3, 9, 1131, 123, 346, 1]])
    request = [LoraRequest("t5", 1.0, 1.0)]
    with torch.no_grad():
        full = pipe.text_encoder_2(ids)[0]
        with manager.applied(pipe, request, load=FLUX1.load_lora):
            expected = pipe.text_encoder_2(ids)[0] - full
        pipe.text_encoder_2 = _t5(files["t5"])
        before = pipe.text_encoder_2(ids)[0]
        with manager.applied(pipe, request, load=FLUX1.load_lora) as applied:
            assert applied.skipped == [] and applied.warnings == []
            change = pipe.text_encoder_2(ids)[0] - before
        assert torch.equal(pipe.text_encoder_2(ids)[0], before)
    assert expected.abs().max() > 1e-3
    assert (change - expected).abs().max() < 0.2 * expected.abs().max()


@torch.no_grad()
def test_sd35_takes_the_gguf_t5_as_its_t5_module(sd3_files, tmp_path):
    from webui.core.families import default_families
    from webui.model_manager.loader import load_checkpoint

    gguf = write_t5(sd3_files["pipe"].text_encoder_3, tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf")
    clips = [sd3_files["clip_g"], sd3_files["clip_l"]]
    families = default_families()
    model = load_checkpoint(sd3_files["no-encoders"], "cpu", torch.float32, families,
                            [*clips, gguf])  # fmt: skip
    assert [p.name for p in model.modules][-1] == gguf.name
    assert storage(model.pipe.text_encoder_3) == "GGUF Q8_0"
    full = load_checkpoint(sd3_files["no-encoders"], "cpu", torch.float32, families,
                           [*clips, sd3_files["t5xxl"]])  # fmt: skip
    ids = torch.tensor([[3, 9, 1131, 123, 346, 1]])
    ours, theirs = model.pipe.text_encoder_3(ids)[0], full.pipe.text_encoder_3(ids)[0]
    assert _cosine(ours, theirs) > 0.99


def test_a_gguf_text_encoder_chosen_as_a_checkpoint_says_where_it_goes(files):
    from webui.core.families import default_families
    from webui.model_manager.loader import CheckpointLoadError, identify_file

    with pytest.raises(CheckpointLoadError, match="T5-XXL .*text encoder, not a checkpoint"):
        identify_file(files["t5"], default_families())
    with pytest.raises(CheckpointLoadError, match="models/text_encoder"):
        identify_file(files["qwen3"], default_families())
