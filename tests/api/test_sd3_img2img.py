"""SD 3.5 in the img2img and inpaint tabs and in hires. fix, through the API: the tiny
all-in-one SD 3.5 Medium file (transformer, VAE, CLIP-L, CLIP-G and T5 in one file)."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch

from tests.api.flow_soft_inpainting import (
    _b64,
    _distance,
    _images,
    _init_image,
    _left_half_mask,
    check_mask_round_off,
    check_soft_inpainting,
)
from tests.conftest import ServerThread
from webui.app import create_app
from webui.model_manager import tiny_sd3
from webui.settings import parse_flags

MODEL = "sd3.5-tiny-aio"


@pytest.fixture(scope="module")
def api(tmp_path_factory, sd3_files) -> Iterator[tuple[str, httpx.Client]]:
    data = tmp_path_factory.mktemp("sd3-img2img")
    models = data / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    shutil.copy(sd3_files["all-in-one"], models / f"{MODEL}.safetensors")
    wide = tiny_sd3.build_tiny_sd3(seed=3, medium=True, positions=32)  # up to 128x128 pixels
    tiny_sd3.save_all_in_one(wide, models / "sd3.5-tiny-wide.safetensors", dtype=torch.float32)
    argv = ["--api", "--nowebui", "--data-dir", str(data)]
    with ServerThread(create_app(parse_flags(argv))) as server, httpx.Client(timeout=600) as c:
        yield server.url + "/sdapi/v1", c


def _post(api, kind: str, model: str = MODEL, **fields) -> httpx.Response:
    url, client = api
    body = {"prompt": "a red square", "steps": 2, "width": 64, "height": 64, "seed": 7,
            "cfg_scale": 1, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": model}, **fields}  # fmt: skip
    if kind == "img2img":
        body.setdefault("init_images", [_b64(_init_image())])
    return client.post(f"{url}/{kind}", json=body)


def test_img2img_follows_the_strength_and_the_shift(api):
    init = np.asarray(_init_image(), dtype=np.int16)
    (kept,) = _images(_post(api, "img2img", denoising_strength=0))
    assert np.array_equal(kept, init)
    (nearest,) = _images(_post(api, "img2img", denoising_strength=0.05))
    low = _post(api, "img2img", denoising_strength=0.3)
    (low_image,) = _images(low)
    (high,) = _images(_post(api, "img2img", denoising_strength=0.95))
    assert 0 < _distance(low_image, nearest) < _distance(high, nearest)
    info = low.json()["info"]
    for field in ("Denoising strength: 0.3", "Shift: 3,", "Seed: 7", f"Model: {MODEL}"):
        assert field in info, info
    shifted = _post(api, "img2img", denoising_strength=0.3, shift=8)
    (shifted_image,) = _images(shifted)
    assert "Shift: 8" in shifted.json()["info"]
    assert not np.array_equal(shifted_image, low_image)  # the shift reaches the schedule


def test_inpaint_leaves_the_unmasked_area_unchanged(api):
    init = np.asarray(_init_image(), dtype=np.int16)
    for extra in ({}, {"inpaint_full_res": True, "inpaint_full_res_padding": 8}):
        response = _post(api, "img2img", mask=_b64(_left_half_mask()), mask_blur=0,
                         denoising_strength=0.9, **extra)  # fmt: skip
        (image,) = _images(response)
        assert np.array_equal(image[:, 32:], init[:, 32:]), extra
        assert _distance(image[:, :32], init[:, :32]) > 1, extra  # repainted


def test_soft_inpainting_and_mask_round_off(api):
    post = functools.partial(_post, api, "img2img")
    check_soft_inpainting(post)
    check_mask_round_off(post)


def test_hires_fix_gives_the_target_size(api):
    for upscaler, scale, side in (("Latent", 1.5, 96), ("Lanczos", 2, 128)):
        response = _post(api, "txt2img", "sd3.5-tiny-wide", enable_hr=True, hr_scale=scale,
                         hr_upscaler=upscaler, denoising_strength=0.5,
                         hr_second_pass_steps=1)  # fmt: skip
        (image,) = _images(response)
        assert image.shape == (side, side, 3)
        info = response.json()["info"]
        assert f"Hires upscaler: {upscaler}" in info and "Shift: 3," in info


def test_a_hires_size_beyond_the_position_embedding_is_a_message(api):
    response = _post(api, "txt2img", enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                     denoising_strength=0.5, hr_second_pass_steps=1)  # fmt: skip
    assert response.status_code != 200  # the tiny model's embedding: 64x64 pixels at most
    assert "at most 64x64 pixels" in response.text and "asked for 128x128" in response.text
