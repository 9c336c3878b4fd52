"""Z-Image through the whole program: ComfyUI's transformer-only file in
models/Stable-diffusion, ae.safetensors and qwen_3_4b.safetensors in Forge's folders,
chosen per job with override_settings; the image, the infotext with the modules, PNG Info
reading it back, CFG (the negative prompt only above 1), prompt editing, refusals."""

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

MODULES = ["ae.safetensors", "qwen_3_4b.safetensors"]


@pytest.fixture(scope="module")
def api(tmp_path_factory, zimage_files) -> Iterator[tuple[str, httpx.Client]]:
    data = tmp_path_factory.mktemp("zimage-gen")
    models = data / "models"
    for folder in ("Stable-diffusion", "VAE", "text_encoder"):
        (models / folder).mkdir(parents=True)
    shutil.copy(
        zimage_files["transformer"], models / "Stable-diffusion" / "z-image-tiny.safetensors"
    )
    shutil.copy(zimage_files["vae"], models / "VAE" / "ae.safetensors")
    shutil.copy(zimage_files["qwen3"], models / "text_encoder" / "qwen_3_4b.safetensors")
    argv = ["--api", "--nowebui", "--data-dir", str(data)]
    with ServerThread(create_app(parse_flags(argv))) as server, httpx.Client(timeout=600) as c:
        yield server.url + "/sdapi/v1", c


def _txt2img(api, modules=MODULES, **fields) -> httpx.Response:
    url, client = api
    body = {"prompt": "一只可爱的猫咪，坐在窗台上看着窗外的雨", "steps": 2, "width": 64,
            "height": 64, "seed": 7, "cfg_scale": 1, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "z-image-tiny",
                                  "forge_additional_modules": modules}, **fields}  # fmt: skip
    return client.post(f"{url}/txt2img", json=body)


def _pixels(response: httpx.Response) -> bytes:
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["images"][0])
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def test_txt2img_gives_an_image_with_the_modules_in_the_infotext(api):
    response = _txt2img(api)
    assert response.status_code == 200, response.text
    answer = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.size == (64, 64)
    info = answer["info"]
    for field in ("一只可爱的猫咪", "Steps: 2", "Sampler: Euler", "Schedule type: Simple",
                  "CFG scale: 1", "Seed: 7", "Model: z-image-tiny", "Module 1: ae",
                  "Module 2: qwen_3_4b"):  # fmt: skip
        assert field in info, info
    assert "Distilled CFG Scale" not in info  # FLUX's guidance embedding only
    url, client = api
    read = client.post(f"{url}/png-info", json={"image": answer["images"][0]}).json()
    assert read["parameters"]["Prompt"] == "一只可爱的猫咪，坐在窗台上看着窗外的雨"
    assert read["parameters"]["Module 2"] == "qwen_3_4b"


def test_same_seed_same_picture_cfg_and_prompt_editing_matter(api):
    first, second = (_pixels(_txt2img(api)) for _ in range(2))
    assert first == second
    negative = {"negative_prompt": "blurry"}  # used only with CFG above 1
    assert _pixels(_txt2img(api, **negative)) == first
    assert _pixels(_txt2img(api, cfg_scale=3, **negative)) != first
    cat, dog = _pixels(_txt2img(api, prompt="a cat")), _pixels(_txt2img(api, prompt="a dog"))
    edited = _pixels(_txt2img(api, prompt="a [cat:dog:0.5]"))
    assert edited not in (cat, dog)


def test_what_z_image_cannot_run_is_refused_with_a_message(api):
    response = _txt2img(api, sampler_name="DPM++ 2M SDE")
    assert response.status_code == 422, response.text
    assert "does not run Z-Image models here; choose one of: Euler, Heun" in response.text
    response = _txt2img(api, scheduler="Align Your Steps")
    assert response.status_code == 422, response.text
    assert "does not apply to Z-Image; choose one of: Simple, Normal" in response.text
    response = _txt2img(api, modules=["ae.safetensors"])
    assert response.status_code in (400, 422), response.text
    assert "qwen_3_4b.safetensors in models/text_encoder" in response.text


def test_the_flow_schedule_types_run_on_z_image(api):
    """Karras, Beta and Exponential space Z-Image's shifted sigmas (as FLUX's): each gives
    another picture than Simple, and the infotext names it."""
    simple = _pixels(_txt2img(api, steps=4))
    for schedule in ("Karras", "Beta", "Exponential"):
        response = _txt2img(api, steps=4, scheduler=schedule)
        assert _pixels(response) != simple, schedule
        assert f"Schedule type: {schedule}" in response.json()["info"]
