"""FLUX.1 through the whole program: a transformer-only file in models/Stable-diffusion,
its modules in Forge's folders, chosen per job with override_settings; the image, Forge's
infotext, and PNG Info reading it back."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.conftest import ServerThread
from webui.app import create_app
from webui.settings import parse_flags

MODULES = ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]


@pytest.fixture(scope="module")
def api(tmp_path_factory, flux_files) -> Iterator[tuple[str, httpx.Client]]:
    data = tmp_path_factory.mktemp("flux-gen")
    models = data / "models"
    for folder in ("Stable-diffusion", "VAE", "text_encoder"):
        (models / folder).mkdir(parents=True)
    shutil.copy(flux_files["transformer"], models / "Stable-diffusion" / "flux1-tiny.safetensors")
    shutil.copy(flux_files["vae"], models / "VAE" / "ae.safetensors")
    shutil.copy(flux_files["clip_l"], models / "text_encoder" / "clip_l.safetensors")
    shutil.copy(flux_files["t5xxl"], models / "text_encoder" / "t5xxl_fp16.safetensors")
    argv = ["--api", "--nowebui", "--data-dir", str(data)]
    with ServerThread(create_app(parse_flags(argv))) as server, httpx.Client(timeout=600) as c:
        yield server.url + "/sdapi/v1", c


def _txt2img(api, **fields) -> httpx.Response:
    url, client = api
    body = {"prompt": "a [cat:dog:0.5], (sharp:1.2)", "steps": 2, "width": 64, "height": 64,
            "seed": 7, "cfg_scale": 1, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "flux1-tiny",
                                  "forge_additional_modules": MODULES}, **fields}  # fmt: skip
    return client.post(f"{url}/txt2img", json=body)


def test_txt2img_gives_an_image_with_forges_infotext_and_png_info_reads_it(api):
    response = _txt2img(api, distilled_cfg_scale=4.5)
    assert response.status_code == 200, response.text
    answer = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.size == (64, 64)
    info = answer["info"]
    for field in ("Steps: 2", "Sampler: Euler", "Schedule type: Simple", "CFG scale: 1",
                  "Distilled CFG Scale: 4.5", "Seed: 7", "Model: flux1-tiny",
                  "Module 1: ae", "Module 2: clip_l", "Module 3: t5xxl_fp16"):  # fmt: skip
        assert field in info, info
    url, client = api
    read = client.post(f"{url}/png-info", json={"image": answer["images"][0]}).json()
    assert read["parameters"]["Distilled CFG Scale"] in (4.5, "4.5")
    assert read["parameters"]["Module 1"] == "ae"


def _pixels(response: httpx.Response) -> bytes:
    data = base64.b64decode(response.json()["images"][0])
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def test_same_seed_same_picture_and_the_guidance_matters(api):
    first, second = (_pixels(_txt2img(api)) for _ in range(2))
    assert first == second
    assert _pixels(_txt2img(api, distilled_cfg_scale=1.0)) != first
    negative = {"negative_prompt": "blurry"}  # used only with true CFG (CFG scale > 1)
    assert _pixels(_txt2img(api, **negative)) == first
    assert _pixels(_txt2img(api, cfg_scale=3, **negative)) != first


def test_what_flux_cannot_run_is_refused_before_the_job_is_queued(api):
    response = _txt2img(api, refiner_checkpoint="flux1-tiny", refiner_switch_at=0.5)
    assert response.status_code == 422, response.text  # was a failed job (custom sigmas)
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "refiner_checkpoint"]
    assert "The Refiner does not run with FLUX.1 models" in detail["msg"]
    response = _txt2img(api, sampler_name="DPM++ 2M SDE")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "sampler_name"]
    assert "does not run FLUX models here; choose one of: Euler, Heun" in detail["msg"]
    response = _txt2img(api, scheduler="Karras-nonsense")
    assert response.status_code == 422, response.text
