"""FLUX.1 through the whole program: a transformer-only file in models/Stable-diffusion,
its modules in Forge's folders, chosen per job with override_settings; the image, Forge's
infotext, and PNG Info reading it back."""

from __future__ import annotations

import functools
import json
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
    refusal,
)

MODULES = ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]


@pytest.fixture(scope="module")
def api(tmp_path_factory, flux_files) -> Iterator:
    files = {"Stable-diffusion/flux1-tiny.safetensors": flux_files["transformer"],
             "VAE/ae.safetensors": flux_files["vae"],
             "text_encoder/clip_l.safetensors": flux_files["clip_l"],
             "text_encoder/t5xxl_fp16.safetensors": flux_files["t5xxl"]}  # fmt: skip
    with flow_server(tmp_path_factory.mktemp("flux-gen"), files) as api:
        yield api


def _txt2img(api, **fields):
    fields = {"prompt": "a [cat:dog:0.5], (sharp:1.2)", **fields}
    return post(api, "txt2img", "flux1-tiny", MODULES, **fields)


def test_txt2img_gives_an_image_with_forges_infotext_and_png_info_reads_it(api):
    response = _txt2img(api, distilled_cfg_scale=4.5)
    fields = ("Steps: 2", "Sampler: Euler", "Schedule type: Simple", "CFG scale: 1",
              "Distilled CFG Scale: 4.5", "Seed: 7", "Model: flux1-tiny",
              "Module 1: ae", "Module 2: clip_l", "Module 3: t5xxl_fp16")  # fmt: skip
    check_infotext(response, fields)
    read = png_info(api, response)
    assert read["Distilled CFG Scale"] in (4.5, "4.5")
    assert read["Module 1"] == "ae"
    assert read["VAE/TE"] == MODULES  # Forge's: the server's files, by stem


def test_the_infotext_field_brings_its_modules_as_forge_does(api):
    """A1111 1.10's `infotext` request field: fields not sent come from it; Forge's
    `Module N` fields choose the job's "VAE / Text Encoder" (matched by stem)."""
    made = post(api, "txt2img", "flux1-tiny", MODULES)
    infotext = json.loads(made.json()["info"])["infotexts"][0]
    again = post(api, "txt2img", "flux1-tiny", None, infotext=infotext)  # no modules sent
    assert again.status_code == 200, again.text
    assert pixels(again) == pixels(made)
    assert "Module 3: t5xxl_fp16" in again.json()["info"]
    missing = infotext.replace("Module 3: t5xxl_fp16", "Module 3: t5xxl_nowhere")
    message = refusal(post(api, "txt2img", "flux1-tiny", None, infotext=missing), "infotext")
    assert "t5xxl_nowhere" in message


def test_same_seed_same_picture_and_the_guidance_matters(api):
    txt2img = functools.partial(_txt2img, api)
    first = check_same_seed(txt2img)
    assert pixels(txt2img(distilled_cfg_scale=1.0)) != first
    check_negative_only_with_cfg(txt2img, first)  # true CFG (CFG scale > 1)


def test_what_flux_cannot_run_is_refused_before_the_job_is_queued(api):
    message = refusal(_txt2img(api, sampler_name="DPM++ 2M SDE"), "sampler_name")
    assert "does not run FLUX models here; choose one of: Euler, Heun" in message
    response = _txt2img(api, scheduler="Karras-nonsense")
    assert response.status_code == 422, response.text
