"""Z-Image in the img2img and inpaint tabs and in hires. fix, through the API: ComfyUI's
tiny transformer file with ae.safetensors and qwen_3_4b.safetensors chosen per job."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

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
from webui.settings import parse_flags

MODEL = "z-image-tiny"


@pytest.fixture(scope="module")
def api(tmp_path_factory, zimage_files) -> Iterator[tuple[str, httpx.Client]]:
    data = tmp_path_factory.mktemp("zimage-img2img")
    models = data / "models"
    for folder in ("Stable-diffusion", "VAE", "text_encoder"):
        (models / folder).mkdir(parents=True)
    shutil.copy(zimage_files["transformer"], models / "Stable-diffusion" / f"{MODEL}.safetensors")
    shutil.copy(zimage_files["vae"], models / "VAE" / "ae.safetensors")
    shutil.copy(zimage_files["qwen3"], models / "text_encoder" / "qwen_3_4b.safetensors")
    argv = ["--api", "--nowebui", "--data-dir", str(data)]
    with ServerThread(create_app(parse_flags(argv))) as server, httpx.Client(timeout=600) as c:
        yield server.url + "/sdapi/v1", c


def _post(api, kind: str, **fields) -> httpx.Response:
    url, client = api
    body = {"prompt": "一只可爱的猫咪", "steps": 2, "width": 64, "height": 64, "seed": 7,
            "cfg_scale": 1, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": MODEL, "forge_additional_modules":
                                  ["ae.safetensors", "qwen_3_4b.safetensors"]},
            **fields}  # fmt: skip
    if kind == "img2img":
        body.setdefault("init_images", [_b64(_init_image())])
    return client.post(f"{url}/{kind}", json=body)


def test_img2img_follows_the_strength_and_strength_0_keeps_the_image(api):
    init = np.asarray(_init_image(), dtype=np.int16)
    (kept,) = _images(_post(api, "img2img", denoising_strength=0))
    assert np.array_equal(kept, init)
    (nearest,) = _images(_post(api, "img2img", denoising_strength=0.05))
    low = _post(api, "img2img", denoising_strength=0.3)
    (low_image,) = _images(low)
    (high,) = _images(_post(api, "img2img", denoising_strength=0.95))
    assert 0 < _distance(low_image, nearest) < _distance(high, nearest)
    info = low.json()["info"]
    for field in ("Denoising strength: 0.3", "Seed: 7", f"Model: {MODEL}", "Module 1: ae"):
        assert field in info, info
    first, second = _images(_post(api, "img2img", denoising_strength=0.6, batch_size=2))
    assert not np.array_equal(first, second)  # each image its own seed
    # another size than the init image's (resized first)
    (other,) = _images(_post(api, "img2img", denoising_strength=0.5, width=96, height=80))
    assert other.shape == (80, 96, 3)


def test_inpaint_leaves_the_unmasked_area_unchanged(api):
    init = np.asarray(_init_image(), dtype=np.int16)
    for extra in ({}, {"inpaint_full_res": True, "inpaint_full_res_padding": 8},
                  {"denoising_strength": 1.0, "subseed": 3, "subseed_strength": 0.5}):  # fmt: skip
        response = _post(api, "img2img", **{"mask": _b64(_left_half_mask()), "mask_blur": 0,
                                            "denoising_strength": 0.9, **extra})  # fmt: skip
        (image,) = _images(response)
        assert np.array_equal(image[:, 32:], init[:, 32:]), extra
        assert _distance(image[:, :32], init[:, :32]) > 1, extra  # repainted


def test_soft_inpainting_and_mask_round_off(api):
    post = functools.partial(_post, api, "img2img")
    check_soft_inpainting(post)
    check_mask_round_off(post)


def test_hires_fix_gives_the_target_size(api):
    for upscaler, scale, side in (("Latent", 1.5, 96), ("Lanczos", 2, 128)):
        response = _post(api, "txt2img", enable_hr=True, hr_scale=scale, hr_upscaler=upscaler,
                         denoising_strength=0.5, hr_second_pass_steps=1)  # fmt: skip
        (image,) = _images(response)
        assert image.shape == (side, side, 3)
        assert f"Hires upscaler: {upscaler}" in response.json()["info"]
