"""FLUX.1 in the img2img and inpaint tabs and in hires. fix, through the API: a tiny
all-in-one FLUX file in models/Stable-diffusion (the transformer, ae, CLIP-L and T5 in
one file, as ComfyUI and Forge users have it); FLUX.1 Fill and Kontext, and a renamed
Kontext file marked as one through /webui/v1/models/flux-variant."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from tests.api.flow_soft_inpainting import check_mask_round_off, check_soft_inpainting
from tests.flow_api import (
    b64,
    check_hires_sizes,
    check_inpaint_keeps_the_unmasked_area,
    check_strength,
    distance,
    flow_server,
    images,
    init_image,
    init_pixels,
    left_half_mask,
    post,
)
from webui.model_manager import tiny_flux


def _save_fill(path) -> None:
    fill = tiny_flux.build_tiny_flux(seed=2, fill=True)
    tiny_flux.save_all_in_one(fill, path, dtype=torch.float32)


@pytest.fixture(scope="module")
def api(tmp_path_factory, flux_files) -> Iterator:
    aio = flux_files["all-in-one"]
    files = {"Stable-diffusion/flux1-aio.safetensors": aio,
             "Stable-diffusion/flux1-kontext-aio.safetensors": aio,
             "Stable-diffusion/my-edits.safetensors": aio,  # a renamed Kontext
             "Stable-diffusion/flux1-fill-aio.safetensors": _save_fill}  # fmt: skip
    with flow_server(tmp_path_factory.mktemp("flux-img2img"), files) as api:
        yield api


def _post(api, kind: str, model: str = "flux1-aio", **fields):
    return post(api, kind, model, **fields)


def test_img2img_follows_the_strength_and_strength_0_keeps_the_image(api):
    img2img = functools.partial(_post, api, "img2img")
    info = ("Distilled CFG Scale: 3.5", "Sampler: Euler", "Model: flux1-aio")
    _, low_image = check_strength(img2img, info)
    (again,) = images(img2img(denoising_strength=0.3))
    assert np.array_equal(again, low_image)  # same seed, same picture


def test_img2img_batches_seeds_variation_and_resize_modes(api):
    response = _post(api, "img2img", denoising_strength=0.6, batch_size=2,
                     subseed=3, subseed_strength=0.5)  # fmt: skip
    first, second = images(response)
    assert not np.array_equal(first, second)
    info = response.json()["info"]
    assert "Variation seed strength: 0.5" in info and "Seed: 7" in info
    assert response.json()["parameters"]["batch_size"] == 2
    tall = init_image().resize((64, 128))
    for mode in (0, 1, 2, 3):  # just resize, crop and resize, resize and fill, latent
        (image,) = images(_post(api, "img2img", init_images=[b64(tall)], resize_mode=mode,
                                denoising_strength=0.5, width=96, height=64))  # fmt: skip
        assert image.shape == (64, 96, 3)


def test_one_step_at_a_low_strength_still_runs_one_step(api):
    (low,) = images(_post(api, "img2img", steps=1, denoising_strength=0.2))
    (lower,) = images(_post(api, "img2img", steps=1, denoising_strength=0.1))
    assert distance(low, lower) > 0  # int(1 x 0.2) is 0 steps; one runs, at its noise


def test_inpaint_leaves_the_unmasked_area_unchanged(api):
    extras = ({}, {"inpainting_fill": 2}, {"inpaint_full_res": True,
                                           "inpaint_full_res_padding": 8})  # fmt: skip
    img2img = functools.partial(_post, api, "img2img")
    response = check_inpaint_keeps_the_unmasked_area(img2img, extras)
    assert "Inpaint area: Only masked" in response.json()["info"]


def test_inpaint_with_a_blurred_mask_and_soft_inpainting(api):
    (image,) = images(_post(api, "img2img", mask=b64(left_half_mask()), mask_blur=4,
                            denoising_strength=0.9))  # fmt: skip
    init = init_pixels()
    assert np.array_equal(image[:, 48:], init[:, 48:])  # beyond the blur
    img2img = functools.partial(_post, api, "img2img")
    check_soft_inpainting(img2img)  # blended unpacked, packed again for the pipeline
    check_mask_round_off(img2img)


def test_hires_fix_gives_the_target_size_with_latent_and_pixel_upscalers(api):
    (plain,) = images(_post(api, "txt2img"))
    check_hires_sizes(functools.partial(_post, api, "txt2img"), ("Distilled CFG Scale: 3.5",))
    assert plain.shape == (64, 64, 3)


def test_flux_fill_is_recognised_by_its_input_layer_and_inpaints(api):
    url, client = api
    models = {m["model_name"]: m for m in client.get(f"{url}/sd-models").json()}
    assert "flux1-fill-aio" in models
    init = init_pixels()
    fill = {"model": "flux1-fill-aio", "mask": b64(left_half_mask()), "mask_blur": 0}
    response = _post(api, "img2img", denoising_strength=1.0, **fill)
    (image,) = images(response)
    assert np.array_equal(image[:, 32:], init[:, 32:])
    assert distance(image[:, :32], init[:, :32]) > 1
    assert "Model: flux1-fill-aio" in response.json()["info"]
    (again,) = images(_post(api, "img2img", denoising_strength=1.0, subseed=5,
                            subseed_strength=0.5, **fill))  # fmt: skip
    assert not np.array_equal(again, image)  # start noise given as latents at strength 1
    (other,) = images(_post(api, "img2img", **{**fill, "model": "flux1-aio"},
                            denoising_strength=1.0))  # fmt: skip
    assert not np.array_equal(other, image)  # a different model, a different picture
    (plain,) = images(_post(api, "img2img", model="flux1-fill-aio", denoising_strength=0.6))
    assert plain.shape == (64, 64, 3)  # no mask: the whole image at the strength
    refused = _post(api, "txt2img", model="flux1-fill-aio")
    assert refused.status_code == 422, refused.text
    assert "FLUX.1 Fill is an inpainting model" in refused.text
    cfg = _post(api, "img2img", cfg_scale=4, **fill)  # no true CFG: refused before queueing
    assert cfg.status_code == 422 and "cfg_scale" in cfg.text and "CFG scale 1" in cfg.text


def test_flux_kontext_reads_the_init_image_as_reference(api):
    kontext = {"model": "flux1-kontext-aio", "prompt": "make it a watercolour"}
    response = _post(api, "img2img", denoising_strength=1.0, **kontext)
    (edited,) = images(response)
    (plain,) = images(_post(api, "img2img", denoising_strength=1.0, prompt=kontext["prompt"]))
    assert not np.array_equal(edited, plain)  # the same weights, plus the reference tokens
    other = init_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    (from_other,) = images(_post(api, "img2img", denoising_strength=1.0,
                                 init_images=[b64(other)], **kontext))  # fmt: skip
    assert not np.array_equal(from_other, edited)  # at strength 1 only the reference differs
    assert "Model: flux1-kontext-aio" in response.json()["info"]
    (masked,) = images(_post(api, "img2img", mask=b64(left_half_mask()), mask_blur=0,
                             denoising_strength=0.9, **kontext))  # fmt: skip
    init = init_pixels()
    assert np.array_equal(masked[:, 32:], init[:, 32:])
    (text,) = images(_post(api, "txt2img", **kontext))  # no image: FLUX.1 dev's way
    (text_dev,) = images(_post(api, "txt2img", prompt=kontext["prompt"]))
    assert np.array_equal(text, text_dev)


def test_soft_inpainting_and_mask_round_off_on_fill_and_kontext(api):
    fill = functools.partial(_post, api, "img2img", model="flux1-fill-aio")
    check_soft_inpainting(fill, inpainting_model=True)
    check_mask_round_off(fill)
    kontext = functools.partial(_post, api, "img2img", model="flux1-kontext-aio")
    check_soft_inpainting(kontext)
    check_mask_round_off(kontext)


def test_img2img_reads_the_distilled_cfg_scale(api):
    response = _post(api, "img2img", denoising_strength=0.5, distilled_cfg_scale=6)
    (image,) = images(response)
    assert "Distilled CFG Scale: 6" in response.json()["info"]
    (default,) = images(_post(api, "img2img", denoising_strength=0.5))
    assert not np.array_equal(image, default)  # the guidance reaches the transformer


def test_a_renamed_kontext_file_runs_as_kontext_once_marked(api):
    url, client = api
    models = url.removesuffix("/sdapi/v1") + "/webui/v1/models"
    edit = {"prompt": "make it a watercolour", "denoising_strength": 1.0}
    (kontext,) = images(_post(api, "img2img", model="flux1-kontext-aio", **edit))
    (unmarked,) = images(_post(api, "img2img", model="my-edits", **edit))  # as FLUX.1 dev
    assert not np.array_equal(unmarked, kontext)  # no reference tokens
    assert client.post(f"{models}/refresh").status_code == 200
    ref = {"kind": "checkpoint", "rel": "my-edits.safetensors"}
    response = client.post(f"{models}/flux-variant", json=ref | {"flux_variant": "kontext"})
    assert response.status_code == 200, response.text
    assert client.get(f"{models}/details", params=ref).json()["flux_variant"] == "kontext"
    (marked,) = images(_post(api, "img2img", model="my-edits", **edit))  # still loaded
    assert np.array_equal(marked, kontext)
    bad = client.post(f"{models}/flux-variant", json=ref | {"flux_variant": "fill"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "flux_variant"
    missing = client.post(f"{models}/flux-variant",
                          json={"kind": "lora", "rel": "x.safetensors", "flux_variant": ""})  # fmt: skip
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"][-1] == "rel"
    assert client.post(f"{models}/flux-variant", json=ref | {"flux_variant": ""}).is_success
    (again,) = images(_post(api, "img2img", model="my-edits", **edit))
    assert np.array_equal(again, unmarked)
