"""Z-Image in the img2img and inpaint tabs and in hires. fix, through the API: ComfyUI's
tiny transformer file with ae.safetensors and qwen_3_4b.safetensors chosen per job."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pytest

from tests.api.flow_soft_inpainting import check_mask_round_off, check_soft_inpainting
from tests.flow_api import (
    check_hires_sizes,
    check_inpaint_keeps_the_unmasked_area,
    check_strength,
    flow_server,
    images,
    post,
)

MODEL = "z-image-tiny"
MODULES = ["ae.safetensors", "qwen_3_4b.safetensors"]


@pytest.fixture(scope="module")
def api(tmp_path_factory, zimage_files) -> Iterator:
    files = {f"Stable-diffusion/{MODEL}.safetensors": zimage_files["transformer"],
             "VAE/ae.safetensors": zimage_files["vae"],
             "text_encoder/qwen_3_4b.safetensors": zimage_files["qwen3"]}  # fmt: skip
    with flow_server(tmp_path_factory.mktemp("zimage-img2img"), files) as api:
        yield api


def _post(api, kind: str, **fields):
    return post(api, kind, MODEL, MODULES, **{"prompt": "一只可爱的猫咪", **fields})


def test_img2img_follows_the_strength_and_strength_0_keeps_the_image(api):
    img2img = functools.partial(_post, api, "img2img")
    check_strength(img2img, (f"Model: {MODEL}", "Module 1: ae"))
    first, second = images(img2img(denoising_strength=0.6, batch_size=2))
    assert not np.array_equal(first, second)  # each image its own seed
    # another size than the init image's (resized first)
    (other,) = images(img2img(denoising_strength=0.5, width=96, height=80))
    assert other.shape == (80, 96, 3)


def test_inpaint_leaves_the_unmasked_area_unchanged(api):
    extras = ({}, {"inpaint_full_res": True, "inpaint_full_res_padding": 8},
              {"denoising_strength": 1.0, "subseed": 3, "subseed_strength": 0.5})  # fmt: skip
    check_inpaint_keeps_the_unmasked_area(functools.partial(_post, api, "img2img"), extras)


def test_soft_inpainting_and_mask_round_off(api):
    img2img = functools.partial(_post, api, "img2img")
    check_soft_inpainting(img2img)
    check_mask_round_off(img2img)


def test_hires_fix_gives_the_target_size(api):
    check_hires_sizes(functools.partial(_post, api, "txt2img"))
