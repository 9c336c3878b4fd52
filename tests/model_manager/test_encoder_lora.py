"""LoRA layers of the big text encoders (FLUX.1's and SD 3.5's T5-XXL, Z-Image's Qwen3), in
kohya and peft layouts, through `LoraManager.applied` as a job applies them: the prompt's
embeddings change with the LoRA's text-encoder weight, weight 0 and the end of the job give
exactly the embeddings without it, and a layer of no encoder is refused naming it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests import tiny_encoder_loras as te
from tests import tiny_flux_loras as flux_loras
from tests.lora_jobs import lora_context
from tests.tiny_scaled_fp8 import write_scaled
from webui.core.families import FLUX1, SD3
from webui.core.families.zimage import ZIMAGE
from webui.core.params import Txt2ImgParams
from webui.core.prompts import LoraRequest
from webui.model_manager.flux_files import build_t5, read_state
from webui.model_manager.flux_keys import t5_config
from webui.model_manager.loader import read_shapes
from webui.model_manager.lora import LoraManager
from webui.model_manager.network_files import AddnetHashCache
from webui.model_manager.registry import HashCache
from webui.model_manager.tiny_flux import build_tiny_flux, save_modules
from webui.model_manager.tiny_sd3 import build_tiny_sd3

IDS = torch.tensor([[3, 9, 1131, 123, 346, 1]])


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "Lora"
    path.mkdir()
    return path


def _manager(folder) -> LoraManager:
    root = folder.parent
    return LoraManager(folder, HashCache(root / "c.json"), AddnetHashCache(root / "a.json"))


def _kohya(folder, pairs) -> dict:
    """A kohya file's transformer tensors for `pairs` (written and read back)."""
    return load_file(str(flux_loras.write_kohya(folder.parent / "unet.safetensors", pairs)))


@torch.no_grad()
def _t5(encoder) -> torch.Tensor:
    return encoder(IDS)[0]


def _check_weights(manager, pipe, load, name, embed) -> None:
    """Embeddings: none == te 0 != te 0.5 != te 1; none again after each job."""
    before = embed()
    seen = []
    for weight in (0.0, 0.5, 1.0):
        with manager.applied(pipe, [LoraRequest(name, weight, 1.0)], load=load) as applied:
            assert applied.skipped == [] and applied.warnings == []
            seen.append(embed())
        assert torch.equal(embed(), before)
    assert torch.equal(seen[0], before)
    assert (seen[1] - before).abs().max() > 1e-3 and (seen[2] - seen[1]).abs().max() > 1e-3


@pytest.mark.parametrize("layout", ["kohya", "peft", "comfyui"])
def test_flux_t5_layers(folder, layout):
    pipe = build_tiny_flux(seed=0)
    prefix = {"kohya": "lora_te2_", "peft": "text_encoder_2.",
              "comfyui": "text_encoders.t5xxl.transformer."}[layout]  # fmt: skip
    t5 = te.encoder_state(pipe.text_encoder_2, prefix, kohya=layout == "kohya")
    # with transformer layers in the same file (kohya's), or T5 alone
    unet = _kohya(folder, flux_loras.bfl_pairs(pipe.transformer)) if layout == "kohya" else {}
    te.write(folder / "with-t5.safetensors", unet, t5)
    manager = _manager(folder)
    _check_weights(manager, pipe, FLUX1.load_lora, "with-t5", lambda: _t5(pipe.text_encoder_2))


def test_sd3_t5_layers_and_a_model_without_t5(folder):
    pipe = build_tiny_sd3(seed=0, medium=True)
    state = te.encoder_state(pipe.text_encoder_3, "lora_te3_", kohya=True)
    te.write(folder / "t5.safetensors", state)
    manager = _manager(folder)
    _check_weights(manager, pipe, SD3.load_lora, "t5", lambda: _t5(pipe.text_encoder_3))
    no_t5 = build_tiny_sd3(seed=0, medium=True)
    no_t5.text_encoder_3 = None  # SD 3.5 loaded without T5: said, not silently dropped
    te.write(folder / "both.safetensors", _kohya(folder, flux_loras.stability_pairs(no_t5)), state)
    manager = _manager(folder)  # (a new listing of the folder)
    with manager.applied(no_t5, [LoraRequest("both", 1.0, 1.0)], load=SD3.load_lora) as applied:
        assert applied.skipped == [] and "both" in applied.hashes
        assert applied.warnings == [
            "both.safetensors: 7 T5-XXL layers not applied: the model has no T5-XXL"
        ]


@pytest.mark.parametrize("layout", ["kohya", "kohya-model", "peft"])
def test_zimage_qwen3_layers(zimage_files, folder, layout):
    pipe = zimage_files["pipe"]
    prefix = "text_encoder." if layout == "peft" else "lora_te_"
    model_prefix = "model." if layout == "kohya-model" else ""
    state = te.encoder_state(pipe.text_encoder, prefix, kohya=layout != "peft",
                             model_prefix=model_prefix)  # fmt: skip
    te.write(folder / "qwen.safetensors", state)

    @torch.no_grad()
    def embed():
        ids = torch.tensor([[151644, 872, 198, 64, 8251]])
        return pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]

    _check_weights(_manager(folder), pipe, ZIMAGE.load_lora, "qwen", embed)


def test_a_layer_of_no_encoder_layer_is_refused_naming_it(folder):
    pipe = build_tiny_flux(seed=0)
    state = te.encoder_state(pipe.text_encoder_2, "lora_te2_", kohya=True)
    state = {k.replace("block_0", "block_7"): v for k, v in state.items()}
    te.write(folder / "bad.safetensors", state)
    with _manager(folder).applied(pipe, [LoraRequest("bad", 1.0, 1.0)], load=FLUX1.load_lora) as applied:  # fmt: skip
        assert applied.skipped == ["bad"]
        assert "encoder_block_7_layer_0_" in applied.warnings[0]
        assert "T5-XXL" in applied.warnings[0]


# --- through the job queue, with T5 freed after encoding and read back -------------------
@pytest.fixture(scope="module")
def flux_ctx(tmp_path_factory, flux_files):
    data = tmp_path_factory.mktemp("flux-t5-lora")
    lora = te.write(data / "t5.safetensors",
                    te.encoder_state(flux_files["pipe"].text_encoder_2, "lora_te2_", kohya=True))  # fmt: skip
    context = lora_context(data, flux_files["all-in-one"], [lora])
    yield context
    context.close()


def _job(ctx, prompt: str, release: str) -> bytes:
    params = Txt2ImgParams(prompt=prompt, steps=2, width=64, height=64, seed=7, cfg_scale=1,
                           sampler_name="Euler", save_images=False).validated()  # fmt: skip
    job = ctx.jobs.submit("txt2img", params, owner="test",
                          options={"text_encoder_release": release})  # fmt: skip
    assert job.done.wait(300), "job did not finish"
    assert job.state == "done", job.error
    return job.result.images[0].image.tobytes()


def test_a_t5_lora_in_flux_jobs_also_when_t5_is_freed_and_reloaded(flux_ctx):
    before = _job(flux_ctx, "a red cube", "Never")
    assert _job(flux_ctx, "a red cube <lora:t5:0>", "Never") == before
    with_lora = _job(flux_ctx, "a red cube <lora:t5:1>", "Never")
    assert with_lora != before
    # "Always": T5 emptied after each job and read back from the file before the next
    assert _job(flux_ctx, "a red cube <lora:t5:1>", "Always") == with_lora
    assert _job(flux_ctx, "a red cube <lora:t5:1>", "Always") == with_lora
    assert _job(flux_ctx, "a red cube", "Always") == before


@pytest.mark.parametrize("stored", ["fp8", "fp8_scaled"])
def test_a_t5_lora_on_a_t5_stored_in_fp8(folder, stored):
    """`t5xxl_fp8_e4m3fn.safetensors` and `..._scaled`: the LoRA adds to the true weights."""
    pipe = build_tiny_flux(seed=0)
    modules = folder.parent / "modules"
    dtype = torch.float8_e4m3fn if stored == "fp8" else torch.float32
    path = save_modules(pipe, modules, dtype=dtype)["t5xxl"]
    if stored == "fp8_scaled":
        path = write_scaled(path, modules / "t5xxl_fp8_e4m3fn_scaled.safetensors")
    t5 = build_t5(t5_config(read_shapes(path), ""), read_state(path, ""), torch.float32)
    assert t5.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    lora = te.encoder_state(pipe.text_encoder_2, "lora_te2_", kohya=True)
    te.write(folder / "t5.safetensors", lora)
    manager = _manager(folder)
    # the change the LoRA makes on the full-precision T5, for reference
    with manager.applied(pipe, [LoraRequest("t5", 1.0, 1.0)], load=FLUX1.load_lora):
        reference = _t5(pipe.text_encoder_2)
    full = _t5(pipe.text_encoder_2)
    pipe.text_encoder_2 = t5
    _check_weights(manager, pipe, FLUX1.load_lora, "t5", lambda: _t5(t5))
    with manager.applied(pipe, [LoraRequest("t5", 1.0, 1.0)], load=FLUX1.load_lora):
        ours = _t5(t5)
    change, expected = ours - _t5(t5), reference - full
    assert (change - expected).abs().max() < 0.2 * expected.abs().max()
