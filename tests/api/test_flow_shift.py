"""The "Shift" field (the flow-matching shift) for FLUX.1 and Z-Image through the whole
program: a set shift changes the image and is written to the infotext, which PNG Info and
the `infotext` request field read back; no shift keeps the family's own schedule; a
checkpoint without flow matching (SD 1.x) refuses a set shift with a 422 naming `shift`."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.conftest import ServerThread
from webui.app import create_app
from webui.settings import parse_flags

ZIMAGE_MODULES = ["ae-zimage.safetensors", "qwen_3_4b.safetensors"]


@pytest.fixture(scope="module")
def api(tmp_path_factory, flux_files, zimage_files, tiny_files) -> Iterator[tuple]:
    data = tmp_path_factory.mktemp("flow-shift")
    models = data / "models"
    for folder in ("Stable-diffusion", "VAE", "text_encoder"):
        (models / folder).mkdir(parents=True)
    checkpoints = models / "Stable-diffusion"
    shutil.copy(flux_files["all-in-one"], checkpoints / "flux1-tiny-aio.safetensors")
    shutil.copy(zimage_files["transformer"], checkpoints / "z-image-tiny.safetensors")
    shutil.copy(tiny_files["sd1"], checkpoints / "tiny-sd1.safetensors")
    shutil.copy(zimage_files["vae"], models / "VAE" / "ae-zimage.safetensors")
    shutil.copy(zimage_files["qwen3"], models / "text_encoder" / "qwen_3_4b.safetensors")
    argv = ["--api", "--nowebui", "--data-dir", str(data)]
    with ServerThread(create_app(parse_flags(argv))) as server, httpx.Client(timeout=600) as c:
        yield server.url + "/sdapi/v1", c


def _txt2img(api, checkpoint: str, modules=(), **fields) -> httpx.Response:
    url, client = api
    body = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 7,
            "cfg_scale": 1, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": checkpoint,
                                  "forge_additional_modules": list(modules)}, **fields}  # fmt: skip
    return client.post(f"{url}/txt2img", json=body)


def _pixels(response: httpx.Response) -> bytes:
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["images"][0])
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def _png_info(api, response: httpx.Response) -> dict:
    url, client = api
    image = response.json()["images"][0]
    return client.post(f"{url}/png-info", json={"image": image}).json()["parameters"]


def test_flux_shift_changes_the_image_and_round_trips_through_the_infotext(api):
    plain = _txt2img(api, "flux1-tiny-aio")
    assert "Shift" not in plain.json()["info"]  # dev's own shift, from the image size
    shifted = _txt2img(api, "flux1-tiny-aio", shift=6.0)
    assert "Shift: 6" in shifted.json()["info"], shifted.json()["info"]
    assert _pixels(shifted) != _pixels(plain)
    assert float(_png_info(api, shifted)["Shift"]) == 6.0
    infotext = "a cat\nSteps: 2, Sampler: Euler, Seed: 7, Shift: 6"
    assert _pixels(_txt2img(api, "flux1-tiny-aio", infotext=infotext)) == _pixels(shifted)


def test_zimage_shift_replaces_its_3_and_round_trips_through_the_infotext(api):
    plain = _txt2img(api, "z-image-tiny", ZIMAGE_MODULES)
    assert "Shift: 3" in plain.json()["info"], plain.json()["info"]
    assert _pixels(_txt2img(api, "z-image-tiny", ZIMAGE_MODULES, shift=3)) == _pixels(plain)
    shifted = _txt2img(api, "z-image-tiny", ZIMAGE_MODULES, shift=8.0)
    assert _pixels(shifted) != _pixels(plain)
    assert float(_png_info(api, shifted)["Shift"]) == 8.0
    infotext = "a cat\nSteps: 2, Sampler: Euler, Seed: 7, Shift: 8"
    again = _txt2img(api, "z-image-tiny", ZIMAGE_MODULES, infotext=infotext)
    assert _pixels(again) == _pixels(shifted)


def test_a_checkpoint_without_flow_matching_refuses_a_shift(api):
    response = _txt2img(api, "tiny-sd1", shift=3.0)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "shift"]
    assert "tiny-sd1" in detail["msg"] and "flow-matching" in detail["msg"]
    assert _txt2img(api, "tiny-sd1").status_code == 200  # no shift: as before


def test_flux_img2img_and_hires_fix_take_the_shift(api):
    """The second pass and img2img schedule with the job's shift too (not only txt2img)."""
    url, client = api
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 30)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode()
    body = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 7,
            "cfg_scale": 1, "sampler_name": "Euler", "init_images": [init],
            "denoising_strength": 0.6,
            "override_settings": {"sd_model_checkpoint": "flux1-tiny-aio"}}  # fmt: skip
    plain = client.post(f"{url}/img2img", json=body)
    shifted = client.post(f"{url}/img2img", json={**body, "shift": 6.0})
    assert "Shift: 6" in shifted.json()["info"] and _pixels(shifted) != _pixels(plain)
    guided = client.post(f"{url}/img2img", json={**body, "distilled_cfg_scale": 9.0})
    assert "Distilled CFG Scale: 9" in guided.json()["info"]  # Forge's field, in img2img too
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent",
             "denoising_strength": 0.6, "hr_second_pass_steps": 2}  # fmt: skip
    first = _txt2img(api, "flux1-tiny-aio", **hires)
    second = _txt2img(api, "flux1-tiny-aio", **hires, shift=6.0)
    assert _pixels(first) != _pixels(second)
