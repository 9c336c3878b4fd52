"""FLUX.1 in the img2img and inpaint tabs and in hires. fix, through the API: a tiny
all-in-one FLUX file in models/Stable-diffusion (the transformer, ae, CLIP-L and T5 in
one file, as ComfyUI and Forge users have it); FLUX.1 Fill and Kontext, and a renamed
Kontext file marked as one through /webui/v1/models/flux-variant."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

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
from webui.model_manager import tiny_flux
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def api(tmp_path_factory, flux_files) -> Iterator[tuple[str, httpx.Client]]:
    data = tmp_path_factory.mktemp("flux-img2img")
    models = data / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    shutil.copy(flux_files["all-in-one"], models / "flux1-aio.safetensors")
    shutil.copy(flux_files["all-in-one"], models / "flux1-kontext-aio.safetensors")
    shutil.copy(flux_files["all-in-one"], models / "my-edits.safetensors")  # a renamed Kontext
    fill = tiny_flux.build_tiny_flux(seed=2, fill=True)
    tiny_flux.save_all_in_one(fill, models / "flux1-fill-aio.safetensors", dtype=torch.float32)
    argv = ["--api", "--nowebui", "--data-dir", str(data)]
    with ServerThread(create_app(parse_flags(argv))) as server, httpx.Client(timeout=600) as c:
        yield server.url + "/sdapi/v1", c


def _post(api, kind: str, model: str = "flux1-aio", **fields) -> httpx.Response:
    url, client = api
    body = {"prompt": "a red square", "steps": 2, "width": 64, "height": 64, "seed": 7,
            "cfg_scale": 1, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": model}, **fields}  # fmt: skip
    if kind == "img2img":
        body.setdefault("init_images", [_b64(_init_image())])
    return client.post(f"{url}/{kind}", json=body)


def test_img2img_follows_the_strength_and_strength_0_keeps_the_image(api):
    init = np.asarray(_init_image(), dtype=np.int16)
    (kept,) = _images(_post(api, "img2img", denoising_strength=0))
    assert np.array_equal(kept, init)
    # the tiny autoencoder's random weights never give the picture back, so the results
    # are compared with the one nearest the init image (strength 0.05)
    (nearest,) = _images(_post(api, "img2img", denoising_strength=0.05))
    low = _post(api, "img2img", denoising_strength=0.3)
    (high,) = _images(_post(api, "img2img", denoising_strength=0.95))
    (low_image,) = _images(low)
    assert 0 < _distance(low_image, nearest) < _distance(high, nearest)
    info = low.json()["info"]
    for field in ("Denoising strength: 0.3", "Distilled CFG Scale: 3.5", "Seed: 7",
                  "Sampler: Euler", "Model: flux1-aio"):  # fmt: skip
        assert field in info, info
    (again,) = _images(_post(api, "img2img", denoising_strength=0.3))
    assert np.array_equal(again, low_image)  # same seed, same picture


def test_img2img_batches_seeds_variation_and_resize_modes(api):
    response = _post(api, "img2img", denoising_strength=0.6, batch_size=2,
                     subseed=3, subseed_strength=0.5)  # fmt: skip
    first, second = _images(response)
    assert not np.array_equal(first, second)
    info = response.json()["info"]
    assert "Variation seed strength: 0.5" in info and "Seed: 7" in info
    assert response.json()["parameters"]["batch_size"] == 2
    tall = _init_image().resize((64, 128))
    for mode in (0, 1, 2, 3):  # just resize, crop and resize, resize and fill, latent
        (image,) = _images(_post(api, "img2img", init_images=[_b64(tall)], resize_mode=mode,
                                 denoising_strength=0.5, width=96, height=64))  # fmt: skip
        assert image.shape == (64, 96, 3)


def test_one_step_at_a_low_strength_still_runs_one_step(api):
    (low,) = _images(_post(api, "img2img", steps=1, denoising_strength=0.2))
    (lower,) = _images(_post(api, "img2img", steps=1, denoising_strength=0.1))
    assert _distance(low, lower) > 0  # int(1 x 0.2) is 0 steps; one runs, at its noise


def test_inpaint_leaves_the_unmasked_area_unchanged(api):
    init = np.asarray(_init_image(), dtype=np.int16)
    for extra in ({}, {"inpainting_fill": 2}, {"inpaint_full_res": True,
                                               "inpaint_full_res_padding": 8}):  # fmt: skip
        response = _post(api, "img2img", mask=_b64(_left_half_mask()), mask_blur=0,
                         denoising_strength=0.9, **extra)  # fmt: skip
        (image,) = _images(response)
        assert np.array_equal(image[:, 32:], init[:, 32:]), extra
        assert _distance(image[:, :32], init[:, :32]) > 1, extra  # repainted
    assert "Inpaint area: Only masked" in response.json()["info"]


def test_inpaint_with_a_blurred_mask_and_soft_inpainting(api):
    (image,) = _images(_post(api, "img2img", mask=_b64(_left_half_mask()), mask_blur=4,
                             denoising_strength=0.9))  # fmt: skip
    init = np.asarray(_init_image(), dtype=np.int16)
    assert np.array_equal(image[:, 48:], init[:, 48:])  # beyond the blur
    post = functools.partial(_post, api, "img2img")
    check_soft_inpainting(post)  # blended unpacked, packed again for the pipeline
    check_mask_round_off(post)


def test_hires_fix_gives_the_target_size_with_latent_and_pixel_upscalers(api):
    (plain,) = _images(_post(api, "txt2img"))
    for upscaler, scale, side in (("Latent", 1.5, 96), ("Lanczos", 2, 128)):
        response = _post(api, "txt2img", enable_hr=True, hr_scale=scale, hr_upscaler=upscaler,
                         denoising_strength=0.5, hr_second_pass_steps=1)  # fmt: skip
        (image,) = _images(response)
        assert image.shape == (side, side, 3)
        info = response.json()["info"]
        assert f"Hires upscaler: {upscaler}" in info and "Distilled CFG Scale: 3.5" in info
    assert plain.shape == (64, 64, 3)


def test_flux_fill_is_recognised_by_its_input_layer_and_inpaints(api):
    url, client = api
    models = {m["model_name"]: m for m in client.get(f"{url}/sd-models").json()}
    assert "flux1-fill-aio" in models
    init = np.asarray(_init_image(), dtype=np.int16)
    fill = {"model": "flux1-fill-aio", "mask": _b64(_left_half_mask()), "mask_blur": 0}
    response = _post(api, "img2img", denoising_strength=1.0, **fill)
    (image,) = _images(response)
    assert np.array_equal(image[:, 32:], init[:, 32:])
    assert _distance(image[:, :32], init[:, :32]) > 1
    assert "Model: flux1-fill-aio" in response.json()["info"]
    (again,) = _images(_post(api, "img2img", denoising_strength=1.0, subseed=5,
                             subseed_strength=0.5, **fill))  # fmt: skip
    assert not np.array_equal(again, image)  # start noise given as latents at strength 1
    (other,) = _images(_post(api, "img2img", **{**fill, "model": "flux1-aio"},
                             denoising_strength=1.0))  # fmt: skip
    assert not np.array_equal(other, image)  # a different model, a different picture
    (plain,) = _images(_post(api, "img2img", model="flux1-fill-aio", denoising_strength=0.6))
    assert plain.shape == (64, 64, 3)  # no mask: the whole image at the strength
    refused = _post(api, "txt2img", model="flux1-fill-aio")
    assert refused.status_code == 422, refused.text
    assert "FLUX.1 Fill is an inpainting model" in refused.text
    cfg = _post(api, "img2img", cfg_scale=4, **fill)  # no true CFG: refused before queueing
    assert cfg.status_code == 422 and "cfg_scale" in cfg.text and "CFG scale 1" in cfg.text


def test_flux_kontext_reads_the_init_image_as_reference(api):
    kontext = {"model": "flux1-kontext-aio", "prompt": "make it a watercolour"}
    response = _post(api, "img2img", denoising_strength=1.0, **kontext)
    (edited,) = _images(response)
    (plain,) = _images(_post(api, "img2img", denoising_strength=1.0, prompt=kontext["prompt"]))
    assert not np.array_equal(edited, plain)  # the same weights, plus the reference tokens
    other = _init_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    (from_other,) = _images(_post(api, "img2img", denoising_strength=1.0,
                                  init_images=[_b64(other)], **kontext))  # fmt: skip
    assert not np.array_equal(from_other, edited)  # at strength 1 only the reference differs
    assert "Model: flux1-kontext-aio" in response.json()["info"]
    (masked,) = _images(_post(api, "img2img", mask=_b64(_left_half_mask()), mask_blur=0,
                              denoising_strength=0.9, **kontext))  # fmt: skip
    init = np.asarray(_init_image(), dtype=np.int16)
    assert np.array_equal(masked[:, 32:], init[:, 32:])
    (text,) = _images(_post(api, "txt2img", **kontext))  # no image: FLUX.1 dev's way
    (text_dev,) = _images(_post(api, "txt2img", prompt=kontext["prompt"]))
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
    (image,) = _images(response)
    assert "Distilled CFG Scale: 6" in response.json()["info"]
    (default,) = _images(_post(api, "img2img", denoising_strength=0.5))
    assert not np.array_equal(image, default)  # the guidance reaches the transformer


def test_a_renamed_kontext_file_runs_as_kontext_once_marked(api):
    url, client = api
    models = url.removesuffix("/sdapi/v1") + "/webui/v1/models"
    edit = {"prompt": "make it a watercolour", "denoising_strength": 1.0}
    (kontext,) = _images(_post(api, "img2img", model="flux1-kontext-aio", **edit))
    (unmarked,) = _images(_post(api, "img2img", model="my-edits", **edit))  # as FLUX.1 dev
    assert not np.array_equal(unmarked, kontext)  # no reference tokens
    assert client.post(f"{models}/refresh").status_code == 200
    ref = {"kind": "checkpoint", "rel": "my-edits.safetensors"}
    response = client.post(f"{models}/flux-variant", json=ref | {"flux_variant": "kontext"})
    assert response.status_code == 200, response.text
    assert client.get(f"{models}/details", params=ref).json()["flux_variant"] == "kontext"
    (marked,) = _images(_post(api, "img2img", model="my-edits", **edit))  # still loaded
    assert np.array_equal(marked, kontext)
    bad = client.post(f"{models}/flux-variant", json=ref | {"flux_variant": "fill"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "flux_variant"
    missing = client.post(f"{models}/flux-variant",
                          json={"kind": "lora", "rel": "x.safetensors", "flux_variant": ""})  # fmt: skip
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"][-1] == "rel"
    assert client.post(f"{models}/flux-variant", json=ref | {"flux_variant": ""}).is_success
    (again,) = _images(_post(api, "img2img", model="my-edits", **edit))
    assert np.array_equal(again, unmarked)
