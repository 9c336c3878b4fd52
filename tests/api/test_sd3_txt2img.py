"""SD 3.5 through the whole program: an all-in-one file and a transformer-only file whose
modules (VAE, CLIP-L, CLIP-G, T5) lie in Forge's folders and are chosen per job with
override_settings; the image, the infotext (Shift, the modules), PNG Info reading it
back, real CFG with the negative prompt, the shift, and what SD 3.5 cannot run yet."""

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

MODULES = ["sd3_vae.safetensors", "clip_l.safetensors", "clip_g.safetensors",
           "t5xxl_fp16.safetensors"]  # fmt: skip


@pytest.fixture(scope="module")
def api(tmp_path_factory, sd3_files) -> Iterator[tuple[str, httpx.Client]]:
    data = tmp_path_factory.mktemp("sd3-gen")
    models = data / "models"
    for folder in ("Stable-diffusion", "VAE", "text_encoder"):
        (models / folder).mkdir(parents=True)
    checkpoints = models / "Stable-diffusion"
    shutil.copy(sd3_files["transformer"], checkpoints / "sd3.5-tiny-dit.safetensors")
    shutil.copy(sd3_files["all-in-one"], checkpoints / "sd3.5-tiny-aio.safetensors")
    shutil.copy(sd3_files["vae"], models / "VAE" / "sd3_vae.safetensors")
    for kind, name in (("clip_l", "clip_l"), ("clip_g", "clip_g"), ("t5xxl", "t5xxl_fp16")):
        shutil.copy(sd3_files[kind], models / "text_encoder" / f"{name}.safetensors")
    argv = ["--api", "--nowebui", "--data-dir", str(data)]
    with ServerThread(create_app(parse_flags(argv))) as server, httpx.Client(timeout=600) as c:
        yield server.url + "/sdapi/v1", c


def _txt2img(api, checkpoint="sd3.5-tiny-aio", modules=(), **fields) -> httpx.Response:
    url, client = api
    body = {"prompt": "a [cat:dog:0.5], (sharp:1.2)", "steps": 2, "width": 64, "height": 64,
            "seed": 7, "cfg_scale": 4, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": checkpoint,
                                  "forge_additional_modules": list(modules)}, **fields}  # fmt: skip
    return client.post(f"{url}/txt2img", json=body)


def _pixels(response: httpx.Response) -> bytes:
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["images"][0])
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def test_transformer_with_modules_gives_an_image_with_infotext_and_png_info_reads_it(api):
    response = _txt2img(api, "sd3.5-tiny-dit", MODULES, negative_prompt="blurry")
    assert response.status_code == 200, response.text
    answer = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.size == (64, 64)
    info = answer["info"]
    for field in ("Negative prompt: blurry", "Steps: 2", "Sampler: Euler",
                  "Schedule type: Simple", "CFG scale: 4", "Shift: 3", "Seed: 7",
                  "Model: sd3.5-tiny-dit", "Module 1: sd3_vae", "Module 2: clip_l",
                  "Module 3: clip_g", "Module 4: t5xxl_fp16"):  # fmt: skip
        assert field in info, info
    url, client = api
    read = client.post(f"{url}/png-info", json={"image": answer["images"][0]}).json()
    assert float(read["parameters"]["Shift"]) == 3.0
    assert read["parameters"]["Module 3"] == "clip_g"


def test_same_seed_same_picture_and_cfg_negative_and_shift_matter(api):
    first, second = (_pixels(_txt2img(api)) for _ in range(2))
    assert first == second
    assert _pixels(_txt2img(api, negative_prompt="blurry")) != first  # real CFG
    no_cfg = _pixels(_txt2img(api, cfg_scale=1))  # Turbo's way: no negative pass
    assert _pixels(_txt2img(api, cfg_scale=1, negative_prompt="blurry")) == no_cfg
    shifted = _pixels(_txt2img(api, shift=6.0))
    assert shifted != first
    # the infotext field restores the shift (A1111's `infotext` request field)
    assert _pixels(_txt2img(api, infotext="a cat\nSteps: 2, Sampler: Euler, Shift: 6.0")) == shifted


def test_what_sd3_cannot_run_is_refused_before_the_job_is_queued(api):
    response = _txt2img(api, sampler_name="DPM++ 2M SDE")
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "sampler_name"]
    assert "does not run SD 3.5 models here; choose one of: Euler, Heun" in detail["msg"]
    response = _txt2img(api, shift=0)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "shift"]


def test_a_size_beyond_the_position_embedding_is_a_message(api):
    response = _txt2img(api, width=128)  # the tiny model's embedding: 16 patches, 64 px
    assert response.status_code != 200
    assert "at most 64x64 pixels" in response.text and "asked for 128x64" in response.text


def test_a_missing_text_encoder_is_a_422_naming_file_and_folder(api):
    response = _txt2img(api, "sd3.5-tiny-dit", [m for m in MODULES if m != "clip_g.safetensors"])
    assert response.status_code == 422, response.text
    text = response.text
    assert "forge_additional_modules" in text and "sd3.5-tiny-dit.safetensors" in text
    assert "CLIP-G" in text and "clip_g.safetensors" in text and "models/text_encoder" in text
