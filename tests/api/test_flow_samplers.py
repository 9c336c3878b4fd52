"""Heun, DPM++ 2M and UniPC on FLUX.1, SD 3.5 and Z-Image, through the API: each runs
txt2img and img2img and differs from Euler at few steps; the other samplers are refused
with a 422 naming `sampler_name`. Tiny models in the files users have. (That they come
close to Euler's result at many steps is tests/core/test_flow_samplers_converge.py: on
latents, as 8-bit pixels round the difference away.)"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.api.flow_soft_inpainting import check_soft_inpainting
from tests.flow_api import b64, distance, flow_server, images, init_image

SAMPLERS = ("Heun", "DPM++ 2M", "UniPC")
FAMILIES = {
    "flux": {"cfg_scale": 1, "override_settings": {
        "sd_model_checkpoint": "flux1-tiny",
        "forge_additional_modules": ["ae.safetensors", "clip_l.safetensors",
                                     "t5xxl_fp16.safetensors"]}},
    "sd3": {"cfg_scale": 4, "override_settings": {"sd_model_checkpoint": "sd3.5-tiny-aio"}},
    "zimage": {"cfg_scale": 1, "override_settings": {
        "sd_model_checkpoint": "z-image-tiny",
        "forge_additional_modules": ["z_ae.safetensors", "qwen_3_4b.safetensors"]}},
}  # fmt: skip


@pytest.fixture(scope="module")
def api(tmp_path_factory, flux_files, sd3_files, zimage_files) -> Iterator[tuple]:
    files = {"Stable-diffusion/flux1-tiny.safetensors": flux_files["transformer"],
             "VAE/ae.safetensors": flux_files["vae"],
             "text_encoder/clip_l.safetensors": flux_files["clip_l"],
             "text_encoder/t5xxl_fp16.safetensors": flux_files["t5xxl"],
             "Stable-diffusion/sd3.5-tiny-aio.safetensors": sd3_files["all-in-one"],
             "Stable-diffusion/z-image-tiny.safetensors": zimage_files["transformer"],
             "VAE/z_ae.safetensors": zimage_files["vae"],
             "text_encoder/qwen_3_4b.safetensors": zimage_files["qwen3"]}  # fmt: skip
    with flow_server(tmp_path_factory.mktemp("flow-samplers"), files) as api:
        yield api


def _post(api, family: str, kind: str = "txt2img", **fields) -> httpx.Response:
    url, client = api
    body = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 7,
            "sampler_name": "Euler", **FAMILIES[family], **fields}  # fmt: skip
    if kind == "img2img":
        body.setdefault("init_images", [b64(init_image())])
        body.setdefault("denoising_strength", 0.9)
    return client.post(f"{url}/{kind}", json=body)


def _image(response: httpx.Response) -> np.ndarray:
    (image,) = images(response)
    return image


@pytest.mark.parametrize("family", FAMILIES)
def test_each_sampler_runs_txt2img_and_img2img_and_is_not_euler(api, family):
    euler = _image(_post(api, family))
    euler_img2img = _image(_post(api, family, "img2img"))
    init = np.asarray(init_image(), dtype=np.int16)
    for sampler in SAMPLERS:
        response = _post(api, family, sampler_name=sampler)
        image = _image(response)
        assert distance(image, euler) > 0.2, sampler
        info = response.json()["info"]
        assert f"Sampler: {sampler}, Schedule type: Simple" in info, info
        img2img = _image(_post(api, family, "img2img", sampler_name=sampler))
        assert distance(img2img, euler_img2img) > 0.2, sampler
        # starting lower in the schedule keeps more of the init image
        low = _image(_post(api, family, "img2img", sampler_name=sampler, denoising_strength=0.2))
        assert 0 < distance(low, init) < distance(img2img, init), sampler
        kept = _image(_post(api, family, "img2img", sampler_name=sampler, denoising_strength=0))
        assert np.array_equal(kept, init)


@pytest.mark.parametrize("family", FAMILIES)
def test_samplers_without_a_flow_matching_form_are_refused(api, family):
    for sampler in ("Euler a", "DPM++ 2M SDE", "DPM++ SDE", "LCM", "DDIM"):
        response = _post(api, family, sampler_name=sampler)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "sampler_name"]
        assert "choose one of: Euler, Heun, DPM++ 2M, UniPC" in detail["msg"]


def test_schedule_types_hires_fix_and_png_info_with_the_new_samplers(api):
    simple = _image(_post(api, "sd3", sampler_name="DPM++ 2M"))
    karras = _post(api, "sd3", sampler_name="DPM++ 2M", scheduler="Karras")
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in karras.json()["info"]
    assert distance(_image(karras), simple) > 0.5
    url, client = api
    read = client.post(f"{url}/png-info", json={"image": karras.json()["images"][0]}).json()
    assert read["parameters"]["Sampler"] == "DPM++ 2M"
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
             "denoising_strength": 0.5, "hr_second_pass_steps": 3}  # fmt: skip
    response = _post(api, "flux", sampler_name="Heun", hr_sampler_name="UniPC", **hires)
    assert _image(response).shape == (96, 96, 3)
    assert "Hires sampler: UniPC" in response.json()["info"]
    same = _image(_post(api, "flux", sampler_name="Heun", hr_sampler_name="Heun", **hires))
    assert distance(_image(response), same) > 0.2


def test_soft_inpainting_with_a_multistep_sampler(api):
    """Soft inpainting blends the denoised prediction of each step: DPM++ 2M's too."""
    post = functools.partial(_post, api, "zimage", "img2img", sampler_name="DPM++ 2M", steps=4)
    check_soft_inpainting(post)
