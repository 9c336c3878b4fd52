"""SD 3.5 LoRA files in kohya, ComfyUI (Stability's names) and diffusers/peft layouts on the
tiny SD 3.5 Medium (dual attention in block 0): the conversion against merged weights, the
text encoders, LoRAs of other families refused with a message, the header's family, and
`<lora:name:w>` through the job queue."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import tiny_flux_loras as loras
from tests.lora_jobs import check_lora_tag, lora_context, pixels, run_flow
from tests.tiny_flux_loras import sd3_transformer_out
from webui.core.families import SD3
from webui.model_manager import sd3_files
from webui.model_manager.sniff import read_header, sniff
from webui.model_manager.tiny_sd3 import build_tiny_sd3, stability_transformer_state

ALPHA = 2.0


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    pipe = build_tiny_sd3(seed=0, medium=True)
    root = tmp_path_factory.mktemp("sd3-loras")
    pairs = loras.stability_pairs(pipe)
    encoders = {"lora_te1_": pipe.text_encoder, "lora_te2_": pipe.text_encoder_2}
    sdxl = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 64),
            "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(64, 4),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 64),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(64, 4)}  # fmt: skip
    save_file(sdxl, str(root / "sdxl.safetensors"))
    return {
        "pipe": pipe,
        "pairs": pairs,
        "kohya": loras.write_kohya(
            root / "kohya.safetensors", pairs, alpha=ALPHA, text_encoders=encoders
        ),  # fmt: skip
        "comfy": loras.write_bfl(root / "comfy.safetensors", pairs),
        "peft": loras.write_peft(root / "peft.safetensors", pipe.transformer),
        "sdxl": root / "sdxl.safetensors",
    }


def _merged(pipe, pairs, alpha):
    return loras.merged_transformer(pipe.transformer, pairs, alpha=alpha,
                                    original=stability_transformer_state,
                                    build=sd3_files.build_transformer)  # fmt: skip


@pytest.mark.parametrize(("layout", "alpha"), [("kohya", ALPHA), ("comfy", None)])
def test_kohya_and_comfy_files_compute_what_the_merged_weights_compute(lora_files, layout, alpha):
    pipe = build_tiny_sd3(seed=0, medium=True)
    base = sd3_transformer_out(pipe.transformer)
    merged = _merged(pipe, lora_files["pairs"], alpha)
    SD3.load_lora(pipe, load_file(str(lora_files[layout])), layout)
    pipe.set_adapters([layout], [1.0])
    got = sd3_transformer_out(pipe.transformer)
    assert (got - base).abs().max() > 0.1
    torch.testing.assert_close(got, sd3_transformer_out(merged), atol=2e-5, rtol=1e-4)
    if layout == "kohya":  # CLIP-L's and CLIP-G's keys went on their encoders
        adapters = pipe.get_list_adapters()
        assert layout in adapters["text_encoder"] and layout in adapters["text_encoder_2"]
    pipe.set_adapters([layout], [0.0])
    assert torch.equal(sd3_transformer_out(pipe.transformer), base)


def test_peft_files_load_through_diffusers(lora_files):
    pipe = build_tiny_sd3(seed=0, medium=True)
    base = sd3_transformer_out(pipe.transformer)
    SD3.load_lora(pipe, load_file(str(lora_files["peft"])), "peft")
    pipe.set_adapters(["peft"], [1.0])
    assert (sd3_transformer_out(pipe.transformer) - base).abs().max() > 1e-3
    pipe.disable_lora()
    assert torch.equal(sd3_transformer_out(pipe.transformer), base)


def test_a_lora_of_another_family_is_a_message_naming_it(lora_files):
    pipe = build_tiny_sd3(seed=0, medium=True)
    with pytest.raises(ValueError, match="made for SDXL, not for SD 3.5"):
        SD3.load_lora(pipe, load_file(str(lora_files["sdxl"])), "sdxl")
    flux = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 64),
            "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(192, 4)}  # fmt: skip
    with pytest.raises(ValueError, match="made for FLUX, not for SD 3.5"):
        SD3.load_lora(pipe, flux, "flux")


def test_the_header_says_sd3_lora(lora_files):
    for layout in ("kohya", "comfy"):
        found = sniff(read_header(lora_files[layout]))
        assert (found.kind, found.family) == ("lora", "SD 3")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, lora_files, sd3_files):
    data = tmp_path_factory.mktemp("sd3-lora-data")
    files = [lora_files[layout] for layout in ("kohya", "sdxl")]
    context = lora_context(data, sd3_files["all-in-one"], files)
    yield context
    context.close()


def test_lora_tag_on_an_sd3_job_weight_zero_other_family_and_removal(ctx):
    before = check_lora_tag(ctx, "kohya")
    other = run_flow(ctx, "a red cube <lora:sdxl:1>")
    assert np.array_equal(pixels(other), before)
    assert any("made for SDXL, not for SD 3.5" in w for w in other.warnings), other.warnings
