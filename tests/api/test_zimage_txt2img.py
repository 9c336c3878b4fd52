"""Z-Image through the whole program: ComfyUI's transformer-only file in
models/Stable-diffusion, ae.safetensors and qwen_3_4b.safetensors in Forge's folders,
chosen per job with override_settings; the image, the infotext with the modules, PNG Info
reading it back, CFG (the negative prompt only above 1), prompt editing, refusals."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from tests.flow_api import (
    check_infotext,
    check_negative_only_with_cfg,
    check_same_seed,
    flow_server,
    pixels,
    png_info,
    post,
)

MODULES = ["ae.safetensors", "qwen_3_4b.safetensors"]
PROMPT = "一只可爱的猫咪，坐在窗台上看着窗外的雨"


@pytest.fixture(scope="module")
def api(tmp_path_factory, zimage_files) -> Iterator:
    files = {"Stable-diffusion/z-image-tiny.safetensors": zimage_files["transformer"],
             "VAE/ae.safetensors": zimage_files["vae"],
             "text_encoder/qwen_3_4b.safetensors": zimage_files["qwen3"]}  # fmt: skip
    with flow_server(tmp_path_factory.mktemp("zimage-gen"), files) as api:
        yield api


def _txt2img(api, modules=MODULES, **fields):
    return post(api, "txt2img", "z-image-tiny", modules, **{"prompt": PROMPT, **fields})


def test_txt2img_gives_an_image_with_the_modules_in_the_infotext(api):
    response = _txt2img(api)
    fields = ("一只可爱的猫咪", "Steps: 2", "Sampler: Euler", "Schedule type: Simple",
              "CFG scale: 1", "Seed: 7", "Model: z-image-tiny", "Module 1: ae",
              "Module 2: qwen_3_4b")  # fmt: skip
    info = check_infotext(response, fields)["info"]
    assert "Distilled CFG Scale" not in info  # FLUX's guidance embedding only
    read = png_info(api, response)
    assert read["Prompt"] == PROMPT
    assert read["Module 2"] == "qwen_3_4b"


def test_same_seed_same_picture_cfg_and_prompt_editing_matter(api):
    txt2img = functools.partial(_txt2img, api)
    check_negative_only_with_cfg(txt2img, check_same_seed(txt2img))
    cat, dog = pixels(_txt2img(api, prompt="a cat")), pixels(_txt2img(api, prompt="a dog"))
    edited = pixels(_txt2img(api, prompt="a [cat:dog:0.5]"))
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
    simple = pixels(_txt2img(api, steps=4))
    for schedule in ("Karras", "Beta", "Exponential"):
        response = _txt2img(api, steps=4, scheduler=schedule)
        assert pixels(response) != simple, schedule
        assert f"Schedule type: {schedule}" in response.json()["info"]
