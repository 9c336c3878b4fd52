"""GGUF text encoders through the whole program, as a ComfyUI-GGUF or Forge user has them:
city96's `t5-v1_1-xxl-encoder-Q8_0.gguf` in models/text_encoder for a FLUX.1 transformer,
`Qwen3-4B-Q8_0.gguf` in ComfyUI's models/text_encoders (`--module-dirs`) for Z-Image, chosen
with `forge_additional_modules`; listed by /sd-modules, named in the infotext."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerThread
from tests.tiny_gguf_text import write_qwen3, write_t5
from webui.app import create_app
from webui.settings import parse_flags

T5_GGUF = "t5-v1_1-xxl-encoder-Q8_0.gguf"
QWEN3_GGUF = "Qwen3-4B-Q8_0.gguf"
FLUX_MODULES = ["ae.safetensors", "clip_l.safetensors"]


@pytest.fixture(scope="module")
def api(tmp_path_factory, flux_files, zimage_files) -> Iterator[tuple[str, httpx.Client]]:
    data = tmp_path_factory.mktemp("gguf-text-api")
    models, comfy = data / "models", data / "ComfyUI" / "models" / "text_encoders"
    for folder in (models / "Stable-diffusion", models / "VAE", models / "text_encoder", comfy):
        folder.mkdir(parents=True)
    shutil.copy(flux_files["transformer"], models / "Stable-diffusion" / "flux1-tiny.safetensors")
    shutil.copy(
        zimage_files["transformer"], models / "Stable-diffusion" / "z-image-tiny.safetensors"
    )
    shutil.copy(flux_files["vae"], models / "VAE" / "ae.safetensors")
    shutil.copy(flux_files["clip_l"], models / "text_encoder" / "clip_l.safetensors")
    shutil.copy(flux_files["t5xxl"], models / "text_encoder" / "t5xxl_fp16.safetensors")
    write_t5(flux_files["pipe"].text_encoder_2, models / "text_encoder" / T5_GGUF)
    write_qwen3(zimage_files["pipe"].text_encoder, comfy / QWEN3_GGUF)
    argv = ["--api", "--nowebui", "--data-dir", str(data), "--module-dirs", str(comfy)]
    with ServerThread(create_app(parse_flags(argv))) as server, httpx.Client(timeout=600) as c:
        yield server.url + "/sdapi/v1", c


def _txt2img(api, checkpoint: str, modules: list[str], prompt: str = "a red cube on a table"
             ) -> httpx.Response:  # fmt: skip
    url, client = api
    body = {"prompt": prompt, "steps": 2, "width": 64, "height": 64,
            "seed": 7, "cfg_scale": 1, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": checkpoint,
                                  "forge_additional_modules": modules}}  # fmt: skip
    return client.post(f"{url}/txt2img", json=body)


def _answer(response: httpx.Response) -> tuple[np.ndarray, str]:
    assert response.status_code == 200, response.text
    answer = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB")
    return np.asarray(image).astype(np.float32), json.loads(answer["info"])["infotexts"][0]


def test_sd_modules_lists_the_gguf_text_encoders(api):
    url, client = api
    names = [m["model_name"] for m in client.get(f"{url}/sd-modules").json()]
    assert T5_GGUF in names and QWEN3_GGUF in names, names


def test_flux_with_the_gguf_t5(api):
    pixels, info = _answer(_txt2img(api, "flux1-tiny", [*FLUX_MODULES, T5_GGUF]))
    assert "Module 3: t5-v1_1-xxl-encoder-Q8_0" in info, info
    assert "t5xxl GGUF Q8_0" in info, info
    full, full_info = _answer(
        _txt2img(api, "flux1-tiny", [*FLUX_MODULES, "t5xxl_fp16.safetensors"])
    )
    assert "Module 3: t5xxl_fp16" in full_info
    other, _ = _answer(_txt2img(api, "flux1-tiny", [*FLUX_MODULES, T5_GGUF], "a blue sphere"))
    close, apart = np.abs(pixels - full).mean(), np.abs(pixels - other).mean()
    assert close < apart / 4  # the same picture up to Q8_0's rounding; the prompt counts


def test_flux_without_t5_names_the_gguf_file(api):
    response = _txt2img(api, "flux1-tiny", FLUX_MODULES)
    assert response.status_code == 422 and T5_GGUF in response.text, response.text


def test_zimage_with_the_gguf_qwen3_from_the_comfyui_folder(api):
    pixels, info = _answer(_txt2img(api, "z-image-tiny", ["ae.safetensors", QWEN3_GGUF]))
    assert pixels.shape == (64, 64, 3)
    assert "Module 2: Qwen3-4B-Q8_0" in info, info
    assert "qwen3 GGUF Q8_0" in info, info
