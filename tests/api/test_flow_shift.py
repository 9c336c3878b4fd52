"""The "Shift" field (the flow-matching shift) for FLUX.1 and Z-Image through the whole
program: a set shift changes the image and is written to the infotext, which PNG Info and
the `infotext` request field read back; no shift keeps the family's own schedule; a
checkpoint without flow matching (SD 1.x) refuses a set shift with a 422 naming `shift`."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.flow_api import b64, check_shift, flow_server, pixels, post, refusal

ZIMAGE_MODULES = ["ae-zimage.safetensors", "qwen_3_4b.safetensors"]


@pytest.fixture(scope="module")
def api(tmp_path_factory, flux_files, zimage_files, tiny_files) -> Iterator:
    files = {"Stable-diffusion/flux1-tiny-aio.safetensors": flux_files["all-in-one"],
             "Stable-diffusion/z-image-tiny.safetensors": zimage_files["transformer"],
             "Stable-diffusion/tiny-sd1.safetensors": tiny_files["sd1"],
             "VAE/ae-zimage.safetensors": zimage_files["vae"],
             "text_encoder/qwen_3_4b.safetensors": zimage_files["qwen3"]}  # fmt: skip
    with flow_server(tmp_path_factory.mktemp("flow-shift"), files) as api:
        yield api


def _txt2img(api, checkpoint: str, modules=(), **fields):
    return post(api, "txt2img", checkpoint, modules, **{"prompt": "a cat", **fields})


def test_flux_shift_changes_the_image_and_round_trips_through_the_infotext(api):
    plain = _txt2img(api, "flux1-tiny-aio")
    assert "Shift" not in plain.json()["info"]  # dev's own shift, from the image size
    check_shift(api, functools.partial(_txt2img, api, "flux1-tiny-aio"), pixels(plain), 6.0)


def test_zimage_shift_replaces_its_3_and_round_trips_through_the_infotext(api):
    txt2img = functools.partial(_txt2img, api, "z-image-tiny", ZIMAGE_MODULES)
    plain = txt2img()
    assert "Shift: 3" in plain.json()["info"], plain.json()["info"]
    assert pixels(txt2img(shift=3)) == pixels(plain)
    check_shift(api, txt2img, pixels(plain), 8.0)


def test_a_checkpoint_without_flow_matching_refuses_a_shift(api):
    message = refusal(_txt2img(api, "tiny-sd1", shift=3.0), "shift")
    assert "tiny-sd1" in message and "flow-matching" in message
    assert _txt2img(api, "tiny-sd1").status_code == 200  # no shift: as before


def test_flux_img2img_and_hires_fix_take_the_shift(api):
    """The second pass and img2img schedule with the job's shift too (not only txt2img)."""
    init = b64(Image.new("RGB", (64, 64), (200, 60, 30)))
    img2img = functools.partial(post, api, "img2img", "flux1-tiny-aio", prompt="a cat",
                                steps=3, init_images=[init], denoising_strength=0.6)  # fmt: skip
    plain = img2img()
    shifted = img2img(shift=6.0)
    assert "Shift: 6" in shifted.json()["info"] and pixels(shifted) != pixels(plain)
    guided = img2img(distilled_cfg_scale=9.0)
    assert "Distilled CFG Scale: 9" in guided.json()["info"]  # Forge's field, in img2img too
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
             "denoising_strength": 0.6, "hr_second_pass_steps": 2}  # fmt: skip
    first = _txt2img(api, "flux1-tiny-aio", **hires)
    second = _txt2img(api, "flux1-tiny-aio", **hires, shift=6.0)
    assert pixels(first) != pixels(second)
