"""SD 3.5 in the img2img and inpaint tabs and in hires. fix, through the API: the tiny
all-in-one SD 3.5 Medium file (transformer, VAE, CLIP-L, CLIP-G and T5 in one file)."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tests.api.flow_soft_inpainting import check_mask_round_off, check_soft_inpainting
from tests.flow_api import (
    check_hires_sizes,
    check_inpaint_keeps_the_unmasked_area,
    check_strength,
    flow_server,
    images,
    post,
)
from webui.model_manager import tiny_sd3

MODEL = "sd3.5-tiny-aio"


def _save_wide(path) -> None:
    wide = tiny_sd3.build_tiny_sd3(seed=3, medium=True, positions=32)  # up to 128x128 pixels
    tiny_sd3.save_all_in_one(wide, path, dtype=torch.float32)


@pytest.fixture(scope="module")
def api(tmp_path_factory, sd3_files) -> Iterator:
    files = {f"Stable-diffusion/{MODEL}.safetensors": sd3_files["all-in-one"],
             "Stable-diffusion/sd3.5-tiny-wide.safetensors": _save_wide}  # fmt: skip
    with flow_server(tmp_path_factory.mktemp("sd3-img2img"), files) as api:
        yield api


def _post(api, kind: str, model: str = MODEL, **fields):
    return post(api, kind, model, **fields)


def test_img2img_follows_the_strength_and_the_shift(api):
    img2img = functools.partial(_post, api, "img2img")
    _, low_image = check_strength(img2img, ("Shift: 3,", f"Model: {MODEL}"))
    shifted = img2img(denoising_strength=0.3, shift=8)
    (shifted_image,) = images(shifted)
    assert "Shift: 8" in shifted.json()["info"]
    assert not np.array_equal(shifted_image, low_image)  # the shift reaches the schedule


def test_inpaint_leaves_the_unmasked_area_unchanged(api):
    extras = ({}, {"inpaint_full_res": True, "inpaint_full_res_padding": 8})
    check_inpaint_keeps_the_unmasked_area(functools.partial(_post, api, "img2img"), extras)


def test_soft_inpainting_and_mask_round_off(api):
    img2img = functools.partial(_post, api, "img2img")
    check_soft_inpainting(img2img)
    check_mask_round_off(img2img)


def test_hires_fix_gives_the_target_size(api):
    txt2img = functools.partial(_post, api, "txt2img", "sd3.5-tiny-wide")
    check_hires_sizes(txt2img, ("Shift: 3,",))


def test_a_hires_size_beyond_the_position_embedding_is_a_message(api):
    response = _post(api, "txt2img", enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                     denoising_strength=0.5, hr_second_pass_steps=1)  # fmt: skip
    assert response.status_code != 200  # the tiny model's embedding: 64x64 pixels at most
    assert "at most 64x64 pixels" in response.text and "asked for 128x128" in response.text
