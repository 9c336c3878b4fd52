"""Z-Image LoRA files in diffusers/peft, ai-toolkit, kohya and ComfyUI layouts on the tiny
Z-Image model: each computes what the merged weights compute, weight 0 and disabling give
the model without it, a LoRA of another family is a message, the header says Z-Image, and
`<lora:name:w>` works through the job queue (a trailing tag leaves no token behind)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests import tiny_flux_loras
from tests import tiny_zimage_loras as loras
from tests.lora_jobs import check_lora_tag, lora_context, run_flow
from webui.core.families.zimage import ZIMAGE
from webui.imaging.infotext import parse_infotext
from webui.model_manager.sniff import read_header, sniff
from webui.model_manager.tiny_flux import build_tiny_flux
from webui.model_manager.tiny_zimage import build_tiny_zimage

ALPHA = 2.0


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    pipe = build_tiny_zimage(seed=0)
    root = tmp_path_factory.mktemp("zimage-loras")
    pairs = loras.pairs(pipe.transformer)
    flux = build_tiny_flux(seed=0)
    return {
        "pairs": pairs,
        "peft": loras.write_peft(root / "peft.safetensors", pairs),
        "ai-toolkit": loras.write_ai_toolkit(root / "aitk.safetensors", pairs, ALPHA),
        "kohya": loras.write_kohya(root / "kohya.safetensors", pairs, ALPHA),
        "comfy": loras.write_comfy(root / "comfy.safetensors", pairs),
        "flux": tiny_flux_loras.write_kohya(
            root / "flux-kohya.safetensors", tiny_flux_loras.bfl_pairs(flux.transformer)
        ),
    }


LAYOUT_ALPHA = [("peft", None), ("ai-toolkit", ALPHA), ("kohya", ALPHA), ("comfy", None)]


@pytest.mark.parametrize(("layout", "alpha"), LAYOUT_ALPHA)
def test_each_layout_computes_what_the_merged_weights_compute(lora_files, layout, alpha):
    pipe = build_tiny_zimage(seed=0)
    base = loras.transformer_out(pipe.transformer)
    merged = loras.merged(pipe.transformer, lora_files["pairs"], alpha=alpha)
    ZIMAGE.load_lora(pipe, load_file(str(lora_files[layout])), layout)
    pipe.set_adapters([layout], [1.0])
    got = loras.transformer_out(pipe.transformer)
    assert (got - base).abs().max() > 0.05
    torch.testing.assert_close(got, loras.transformer_out(merged), atol=2e-5, rtol=1e-4)
    pipe.set_adapters([layout], [0.0])
    assert torch.equal(loras.transformer_out(pipe.transformer), base)
    pipe.disable_lora()
    assert torch.equal(loras.transformer_out(pipe.transformer), base)


def test_a_flux_lora_on_z_image_is_a_message_naming_flux(lora_files):
    pipe = build_tiny_zimage(seed=0)
    with pytest.raises(ValueError, match="a FLUX LoRA: it does not fit a Z-Image model"):
        ZIMAGE.load_lora(pipe, load_file(str(lora_files["flux"])), "flux")


def test_a_key_of_no_layer_is_a_message_naming_it(lora_files):
    pipe = build_tiny_zimage(seed=0)
    state = load_file(str(lora_files["peft"]))
    state["transformer.layers.7.attention.to_q.lora_A.weight"] = torch.zeros(4, 32)
    state["transformer.layers.7.attention.to_q.lora_B.weight"] = torch.zeros(32, 4)
    with pytest.raises(KeyError, match="layers.7.attention.to_q"):
        ZIMAGE.load_lora(pipe, state, "broken")


@pytest.mark.parametrize("layout", ["peft", "ai-toolkit", "kohya", "comfy"])
def test_the_header_says_z_image_lora(lora_files, layout):
    found = sniff(read_header(lora_files[layout]))
    assert (found.kind, found.family) == ("lora", "Z-Image")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, lora_files, zimage_files):
    data = tmp_path_factory.mktemp("zimage-lora-data")
    files = [lora_files[layout] for layout in ("kohya", "comfy", "flux")]
    context = lora_context(data, zimage_files["diffusers"], files)
    yield context
    context.close()


def test_lora_tag_on_a_z_image_job_weight_zero_and_removal(ctx):
    check_lora_tag(ctx, "kohya", "comfy")


def test_a_flux_lora_tag_on_a_z_image_job_is_a_warning_not_silence(ctx):
    result = run_flow(ctx, "a red cube <lora:flux-kohya:1>")
    assert any("flux-kohya" in w and "FLUX LoRA" in w for w in result.warnings), result.warnings
    assert parse_infotext(result.images[0].infotext)["Lora skipped"] == "<lora:flux-kohya:1>"
