"""A1111's Refiner on the flow-matching families through the API: FLUX.1 refined by
another FLUX.1 file or by Z-Image (FLUX's latent space), SD 3.5 by SD 3.5, in txt2img and
img2img; the infotext and PNG Info round trip; a refiner of another latent space is a 422.

Tiny transformer-only files in models/Stable-diffusion completed by Forge's module files
(the refiner takes the kinds it lacks from the job's list too)."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerThread
from webui.app import create_app
from webui.model_manager import tiny_flux, tiny_sd3
from webui.settings import parse_flags

MODULES = ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors",
           "qwen_3_4b.safetensors"]  # fmt: skip


@pytest.fixture(scope="module")
def api(
    tmp_path_factory, flux_files, zimage_files, sd3_files
) -> Iterator[tuple[str, httpx.Client]]:
    data = tmp_path_factory.mktemp("flow-refiner")
    models = data / "models"
    for folder in ("Stable-diffusion", "VAE", "text_encoder"):
        (models / folder).mkdir(parents=True)
    ckpt = models / "Stable-diffusion"
    shutil.copy(flux_files["transformer"], ckpt / "flux1-tiny.safetensors")
    tiny_flux.save_transformer(tiny_flux.build_tiny_flux(seed=3), ckpt / "flux1-tiny-b.safetensors")
    shutil.copy(zimage_files["transformer"], ckpt / "z-image-tiny.safetensors")
    fill = tiny_flux.build_tiny_flux(seed=0, fill=True)
    tiny_flux.save_transformer(fill, ckpt / "flux1-fill-tiny.safetensors")
    shutil.copy(sd3_files["all-in-one"], ckpt / "sd3-tiny.safetensors")
    tiny_sd3.save_all_in_one(tiny_sd3.build_tiny_sd3(seed=3, medium=True),
                             ckpt / "sd3-tiny-b.safetensors")  # fmt: skip
    shutil.copy(flux_files["vae"], models / "VAE" / "ae.safetensors")  # Z-Image's too
    shutil.copy(flux_files["clip_l"], models / "text_encoder" / "clip_l.safetensors")
    shutil.copy(flux_files["t5xxl"], models / "text_encoder" / "t5xxl_fp16.safetensors")
    shutil.copy(zimage_files["qwen3"], models / "text_encoder" / "qwen_3_4b.safetensors")
    argv = ["--api", "--nowebui", "--data-dir", str(data)]
    app = create_app(parse_flags(argv))
    app.state.ctx.options.set("sd_checkpoints_limit", 5)  # each file loads once
    with ServerThread(app) as server, httpx.Client(timeout=600) as client:
        yield server.url + "/sdapi/v1", client


def _post(api, kind="txt2img", checkpoint="flux1-tiny", **fields) -> httpx.Response:
    url, client = api
    body = {"prompt": "a red [cat:dog:0.5]", "steps": 4, "width": 64, "height": 64, "seed": 7,
            "cfg_scale": 1, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": checkpoint,
                                  "forge_additional_modules": MODULES}, **fields}  # fmt: skip
    return client.post(f"{url}/{kind}", json=body)


def _image(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["images"][0])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def _refined(api, refiner: str, at: float = 0.5, **fields) -> np.ndarray:
    return _image(_post(api, refiner_checkpoint=refiner, refiner_switch_at=at, **fields))


@pytest.mark.parametrize(("main", "other"), [("flux1-tiny", "flux1-tiny-b"),
                                             ("z-image-tiny", "flux1-tiny"),
                                             ("sd3-tiny", "sd3-tiny-b")])  # fmt: skip
def test_the_refiner_continues_the_same_schedule(api, main, other):
    """Switch 1.0 is no refiner; the main model as its own refiner changes nothing (the
    sigmas and step index go on across the switch); another file changes the image."""
    plain = _image(_post(api, checkpoint=main))
    assert np.array_equal(plain, _refined(api, other, 1.0, checkpoint=main))
    assert np.array_equal(plain, _refined(api, main, 0.5, checkpoint=main))
    refined = _refined(api, other, 0.5, checkpoint=main)
    assert np.abs(plain - refined).max() > 2
    later = _refined(api, other, 0.75, checkpoint=main)  # the refiner runs fewer steps
    assert np.abs(refined - later).max() > 2


def test_z_image_refines_flux_in_its_latent_space(api):
    plain = _image(_post(api))
    refined = _refined(api, "z-image-tiny", 0.5)
    assert refined.shape == plain.shape and np.abs(plain - refined).max() > 2


def test_img2img_with_a_refiner(api):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (150, 60, 40)).save(buffer, format="PNG")
    start = {"init_images": [base64.b64encode(buffer.getvalue()).decode()],
             "denoising_strength": 0.75, "steps": 8}  # fmt: skip
    plain = _image(_post(api, "img2img", **start))
    same = _image(_post(api, "img2img", refiner_checkpoint="flux1-tiny",
                        refiner_switch_at=0.5, **start))  # fmt: skip
    assert np.array_equal(plain, same)
    other = _image(_post(api, "img2img", refiner_checkpoint="flux1-tiny-b",
                         refiner_switch_at=0.5, **start))  # fmt: skip
    assert np.abs(plain - other).max() > 2


def test_infotext_and_png_info_round_trip(api):
    url, client = api
    response = _post(api, refiner_checkpoint="flux1-tiny-b", refiner_switch_at=0.5)
    png = response.json()["images"][0]
    infotext = response.json()["info"]
    assert "Refiner: flux1-tiny-b" in infotext and "Refiner switch at: 0.5" in infotext
    parsed = client.post(f"{url}/png-info", json={"image": png}).json()
    assert parsed["parameters"]["Refiner"].startswith("flux1-tiny-b")
    assert parsed["parameters"]["Refiner switch at"] in (0.5, "0.5")
    again = _post(api, infotext=parsed["info"])  # A1111 1.10's `infotext` field
    assert np.array_equal(_image(again), _image(response))


@pytest.mark.parametrize(("main", "refiner", "words"), [
    ("flux1-tiny", "sd3-tiny", "sd3-tiny (SD 3.5 Medium) cannot continue the latents of flux1-tiny (FLUX.1)"),
    ("sd3-tiny", "z-image-tiny", "z-image-tiny (Z-Image) cannot continue the latents of sd3-tiny"),
])  # fmt: skip
def test_a_refiner_of_another_latent_space_is_a_422(api, main, refiner, words):
    response = _post(api, checkpoint=main, refiner_checkpoint=refiner, refiner_switch_at=0.5)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "refiner_checkpoint"]
    assert words in detail["msg"]


def test_flux_fill_is_no_refiner(api):
    """FLUX.1 Fill reads a mask in every step: it cannot take over a FLUX.1 job."""
    response = _post(api, refiner_checkpoint="flux1-fill-tiny", refiner_switch_at=0.5)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "refiner_checkpoint"]
    assert "The Refiner does not run with FLUX.1 Fill models" in detail["msg"]


def test_previews_go_on_in_the_refiner_steps(api, monkeypatch):
    """Live previews every step: the refiner's steps preview FLUX's latents unpacked,
    counted on from the switch (the tiny VAE halves the size; steps 1 and 2 of the main model, then 3 of the refiner)."""
    import webui.core.processing as processing

    seen = []
    original = processing.preview_image

    def recording(run, pipe, latents):
        seen.append((run.progress.step, tuple(latents.shape), type(pipe.transformer).__name__))
        return original(run, pipe, latents)

    monkeypatch.setattr(processing, "preview_image", recording)
    url, client = api
    body = {"prompt": "a red cat", "steps": 4, "width": 64, "height": 64, "seed": 7,
            "cfg_scale": 1, "refiner_checkpoint": "z-image-tiny", "refiner_switch_at": 0.5,
            "override_settings": {"sd_model_checkpoint": "flux1-tiny",
                                  "forge_additional_modules": MODULES,
                                  "show_progress_every_n_steps": 1}}  # fmt: skip
    assert client.post(f"{url}/txt2img", json=body).status_code == 200
    assert [(step, shape) for step, shape, _ in seen] == [(s, (1, 16, 32, 32)) for s in (1, 2, 3)]
    assert seen[-1][2] != seen[0][2]  # the last preview is the refiner's (Z-Image)


def test_a_refiner_without_its_module_files_is_a_422(api):
    url, client = api
    body = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "cfg_scale": 1,
            "refiner_checkpoint": "z-image-tiny", "refiner_switch_at": 0.5,
            "override_settings": {"sd_model_checkpoint": "flux1-tiny",
                                  "forge_additional_modules": MODULES[:3]}}  # fmt: skip
    response = client.post(f"{url}/txt2img", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "refiner_checkpoint"]
    assert "qwen" in detail["msg"].lower()
