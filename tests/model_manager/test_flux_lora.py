"""FLUX LoRA files in kohya, BFL (ComfyUI), ai-toolkit/peft and XLabs layouts on the tiny
FLUX model (width 64, never FLUX.1's 3072): the conversion against merged weights, the
header's family, and `<lora:name:w>` through the job queue."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests import tiny_flux_loras as loras
from tests.lora_jobs import check_lora_tag, lora_context
from tests.tiny_flux_loras import transformer_out
from webui.core.families import FLUX1
from webui.model_manager.sniff import read_header, sniff
from webui.model_manager.tiny_flux import build_tiny_flux, save_all_in_one

ALPHA = 2.0


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    pipe = build_tiny_flux(seed=0)
    root = tmp_path_factory.mktemp("flux-loras")
    pairs = loras.bfl_pairs(pipe.transformer)
    return {
        "pipe": pipe,
        "pairs": pairs,
        "kohya": loras.write_kohya(
            root / "kohya.safetensors", pairs, alpha=ALPHA, text_encoder=pipe.text_encoder
        ),  # fmt: skip
        "bfl": loras.write_bfl(root / "bfl.safetensors", pairs),
        "peft": loras.write_peft(root / "peft.safetensors", pipe.transformer),
        "xlabs": loras.write_xlabs(root / "xlabs.safetensors", pipe.transformer),
        "aio": save_all_in_one(pipe, root / "flux1-tiny-aio.safetensors", dtype=torch.float32),
    }


def test_diffusers_own_kohya_converter_fails_on_a_width_that_is_not_3072(lora_files):
    pipe = build_tiny_flux(seed=0)
    with pytest.raises(AssertionError):
        pipe.load_lora_weights(load_file(str(lora_files["kohya"])), adapter_name="raw")


@pytest.mark.parametrize(("layout", "alpha"), [("kohya", ALPHA), ("bfl", None)])
def test_kohya_and_bfl_files_compute_what_the_merged_weights_compute(lora_files, layout, alpha):
    pipe = build_tiny_flux(seed=0)
    base = transformer_out(pipe.transformer)
    merged = loras.merged_transformer(pipe.transformer, lora_files["pairs"], alpha=alpha)
    FLUX1.load_lora(pipe, load_file(str(lora_files[layout])), layout)
    pipe.set_adapters([layout], [1.0])
    got = transformer_out(pipe.transformer)
    assert (got - base).abs().max() > 0.1
    torch.testing.assert_close(got, transformer_out(merged), atol=2e-5, rtol=1e-4)
    if layout == "kohya":  # CLIP-L's keys went on the text encoder
        assert layout in pipe.get_list_adapters()["text_encoder"]
    pipe.disable_lora()
    assert torch.equal(transformer_out(pipe.transformer), base)


@pytest.mark.parametrize("layout", ["peft", "xlabs"])
def test_peft_and_xlabs_files_load_through_diffusers(lora_files, layout):
    pipe = build_tiny_flux(seed=0)
    base = transformer_out(pipe.transformer)
    FLUX1.load_lora(pipe, load_file(str(lora_files[layout])), layout)
    pipe.set_adapters([layout], [1.0])
    assert (transformer_out(pipe.transformer) - base).abs().max() > 1e-3
    pipe.set_adapters([layout], [0.0])
    assert torch.equal(transformer_out(pipe.transformer), base)


@pytest.mark.parametrize("layout", ["kohya", "bfl", "peft", "xlabs"])
def test_the_header_says_flux_lora(lora_files, layout):
    found = sniff(read_header(lora_files[layout]))
    assert (found.kind, found.family) == ("lora", "FLUX")


def test_a_key_of_no_layer_is_a_message_naming_it():
    from webui.model_manager.flux_lora import diffusers_lora_state

    state = {"lora_unet_double_blocks_7_img_attn_qkv.lora_down.weight": torch.zeros(4, 64)}
    config = {"num_attention_heads": 2, "attention_head_dim": 32, "num_layers": 1,
              "num_single_layers": 1}  # fmt: skip
    with pytest.raises(KeyError, match="lora_unet_double_blocks_7_img_attn_qkv"):
        diffusers_lora_state(state, config)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, lora_files):
    data = tmp_path_factory.mktemp("flux-lora-data")
    context = lora_context(data, lora_files["aio"], [lora_files["kohya"], lora_files["xlabs"]])
    yield context
    context.close()


def test_lora_tag_on_a_flux_job_weight_zero_and_removal(ctx):
    check_lora_tag(ctx, "kohya", "xlabs")
