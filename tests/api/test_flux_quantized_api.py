"""Quantized FLUX files through the whole program, as a Forge user drops them in: a GGUF
transformer in models/unet, an fp8 one in models/Stable-diffusion, their modules (T5-XXL
in fp8 too) in Forge's folders, chosen with override_settings; `<lora:…>` on them."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests import tiny_flux_loras as loras
from tests.conftest import ServerThread
from webui.app import create_app
from webui.model_manager.tiny_flux import save_gguf, save_modules, save_transformer
from webui.settings import parse_flags

MODULES = ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]
FP8_MODULES = ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"]


@pytest.fixture(scope="module")
def api(tmp_path_factory, flux_files) -> Iterator[tuple[str, httpx.Client]]:
    data = tmp_path_factory.mktemp("flux-quantized")
    models = data / "models"
    for folder in ("unet", "Stable-diffusion", "VAE", "text_encoder", "Lora"):
        (models / folder).mkdir(parents=True)
    pipe = flux_files["pipe"]
    save_gguf(pipe, models / "unet" / "flux1-tiny-Q4_K_S.gguf", kquant="Q4_K")
    fp8 = torch.float8_e4m3fn
    save_transformer(pipe, models / "Stable-diffusion" / "flux1-tiny-fp8.safetensors", dtype=fp8)
    t5 = save_modules(pipe, data / "fp8-modules", dtype=fp8)["t5xxl"]
    shutil.copy(t5, models / "text_encoder" / "t5xxl_fp8_e4m3fn.safetensors")
    shutil.copy(flux_files["vae"], models / "VAE" / "ae.safetensors")
    shutil.copy(flux_files["clip_l"], models / "text_encoder" / "clip_l.safetensors")
    shutil.copy(flux_files["t5xxl"], models / "text_encoder" / "t5xxl_fp16.safetensors")
    loras.write_kohya(models / "Lora" / "kohya.safetensors", loras.bfl_pairs(pipe.transformer))
    argv = ["--api", "--nowebui", "--data-dir", str(data)]
    with ServerThread(create_app(parse_flags(argv))) as server, httpx.Client(timeout=600) as c:
        yield server.url + "/sdapi/v1", c


def _txt2img(api, checkpoint: str, prompt: str = "a red cube", modules=MODULES) -> dict:
    url, client = api
    body = {"prompt": prompt, "steps": 2, "width": 64, "height": 64, "seed": 7, "cfg_scale": 1,
            "override_settings": {"sd_model_checkpoint": checkpoint,
                                  "forge_additional_modules": modules}}  # fmt: skip
    response = client.post(f"{url}/txt2img", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _pixels(answer: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))))


def test_a_gguf_file_in_models_unet_is_listed_and_generates(api):
    url, client = api
    titles = [m["title"] for m in client.get(f"{url}/sd-models").json()]
    assert any(t.startswith("flux1-tiny-Q4_K_S.gguf") for t in titles), titles
    answer = _txt2img(api, "flux1-tiny-Q4_K_S")
    assert _pixels(answer).shape == (64, 64, 3)
    assert "Model: flux1-tiny-Q4_K_S" in answer["info"] and "Module 1: ae" in answer["info"]
    assert "Weight storage: transformer GGUF Q4_K+Q8_0," in answer["info"]


def test_lora_on_the_gguf_model(api):
    before = _pixels(_txt2img(api, "flux1-tiny-Q4_K_S"))
    with_lora = _txt2img(api, "flux1-tiny-Q4_K_S", "a red cube <lora:kohya:1>")
    assert not np.array_equal(_pixels(with_lora), before)
    assert "Lora hashes: " in with_lora["info"]
    assert np.array_equal(_pixels(_txt2img(api, "flux1-tiny-Q4_K_S")), before)


def test_fp8_transformer_and_t5_generate_say_so_and_take_a_lora(api):
    answer = _txt2img(api, "flux1-tiny-fp8", modules=FP8_MODULES)
    info = json.loads(answer["info"])["infotexts"][0]
    assert 'Weight storage: "transformer fp8_e4m3fn, t5xxl fp8_e4m3fn"' in info, info
    assert "Module 3: t5xxl_fp8_e4m3fn" in info
    url, client = api
    read = client.post(f"{url}/png-info", json={"image": answer["images"][0]}).json()
    assert read["parameters"]["Weight storage"] == "transformer fp8_e4m3fn, t5xxl fp8_e4m3fn"
    before = _pixels(answer)
    with_lora = _txt2img(api, "flux1-tiny-fp8", "a red cube <lora:kohya:1>", FP8_MODULES)
    assert not np.array_equal(_pixels(with_lora), before)
    assert np.array_equal(_pixels(_txt2img(api, "flux1-tiny-fp8", modules=FP8_MODULES)), before)


def test_first_block_cache_through_the_api_and_back_from_the_infotext(api):
    url, client = api
    body = {"prompt": "a red cube", "steps": 4, "width": 64, "height": 64, "seed": 7,
            "cfg_scale": 1, "override_settings": {
                "sd_model_checkpoint": "flux1-tiny-Q4_K_S", "forge_additional_modules": MODULES,
                "first_block_cache_threshold": 0.5}}  # fmt: skip
    response = client.post(f"{url}/txt2img", json=body)
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "First Block Cache: 0.5" in infotext
    again = {"prompt": "a red cube", "infotext": infotext,
             "override_settings": {"forge_additional_modules": MODULES}}  # fmt: skip
    replay = client.post(f"{url}/txt2img", json=again)
    assert replay.status_code == 200, replay.text
    assert replay.json()["images"][0] == response.json()["images"][0]
    bad = {**body, "override_settings": {**body["override_settings"],
                                         "first_block_cache_threshold": 2}}  # fmt: skip
    refused = client.post(f"{url}/txt2img", json=bad)
    assert refused.status_code == 422 and "first_block_cache_threshold" in refused.text
