"""SD 3.5 through the whole program: an all-in-one file and a transformer-only file whose
modules (VAE, CLIP-L, CLIP-G, T5) lie in Forge's folders and are chosen per job with
override_settings; the image, the infotext (Shift, the modules), PNG Info reading it
back, real CFG with the negative prompt, the shift, and what SD 3.5 cannot run yet."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from tests.flow_api import (
    check_infotext,
    check_same_seed,
    check_shift,
    flow_server,
    pixels,
    png_info,
    post,
    refusal,
)

MODULES = ["sd3_vae.safetensors", "clip_l.safetensors", "clip_g.safetensors",
           "t5xxl_fp16.safetensors"]  # fmt: skip


@pytest.fixture(scope="module")
def api(tmp_path_factory, sd3_files) -> Iterator:
    files = {"Stable-diffusion/sd3.5-tiny-dit.safetensors": sd3_files["transformer"],
             "Stable-diffusion/sd3.5-tiny-aio.safetensors": sd3_files["all-in-one"],
             "VAE/sd3_vae.safetensors": sd3_files["vae"]}  # fmt: skip
    for kind, name in (("clip_l", "clip_l"), ("clip_g", "clip_g"), ("t5xxl", "t5xxl_fp16")):
        files[f"text_encoder/{name}.safetensors"] = sd3_files[kind]
    with flow_server(tmp_path_factory.mktemp("sd3-gen"), files) as api:
        yield api


def _txt2img(api, checkpoint="sd3.5-tiny-aio", modules=(), **fields):
    fields = {"prompt": "a [cat:dog:0.5], (sharp:1.2)", "cfg_scale": 4, **fields}
    return post(api, "txt2img", checkpoint, modules, **fields)


def test_transformer_with_modules_gives_an_image_with_infotext_and_png_info_reads_it(api):
    response = _txt2img(api, "sd3.5-tiny-dit", MODULES, negative_prompt="blurry")
    fields = ("Negative prompt: blurry", "Steps: 2", "Sampler: Euler",
              "Schedule type: Simple", "CFG scale: 4", "Shift: 3", "Seed: 7",
              "Model: sd3.5-tiny-dit", "Module 1: sd3_vae", "Module 2: clip_l",
              "Module 3: clip_g", "Module 4: t5xxl_fp16")  # fmt: skip
    check_infotext(response, fields)
    read = png_info(api, response)
    assert float(read["Shift"]) == 3.0
    assert read["Module 3"] == "clip_g"


def test_same_seed_same_picture_and_cfg_negative_and_shift_matter(api):
    first = check_same_seed(functools.partial(_txt2img, api))
    assert pixels(_txt2img(api, negative_prompt="blurry")) != first  # real CFG
    no_cfg = pixels(_txt2img(api, cfg_scale=1))  # Turbo's way: no negative pass
    assert pixels(_txt2img(api, cfg_scale=1, negative_prompt="blurry")) == no_cfg
    # the infotext field restores the shift (A1111's `infotext` request field)
    check_shift(api, functools.partial(_txt2img, api), first, 6.0)


def test_what_sd3_cannot_run_is_refused_before_the_job_is_queued(api):
    message = refusal(_txt2img(api, sampler_name="DPM++ 2M SDE"), "sampler_name")
    assert "does not run SD 3.5 models here; choose one of: Euler, Heun" in message
    refusal(_txt2img(api, shift=0), "shift")


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
