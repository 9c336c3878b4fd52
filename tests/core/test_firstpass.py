"""txt2img's `firstpass_image` (A1111 1.7): with hires. fix, the given image is the first
pass and only the hires. fix pass runs over it. One server with the tiny SD 1.x model."""

from __future__ import annotations

import base64
import io
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerThread
from webui.app import create_app
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    data = tmp_path_factory.mktemp("firstpass")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], ckpt / "tiny-sd1.safetensors")
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        yield srv


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


COMMON = {
    "prompt": "a castle",
    "negative_prompt": "fog",
    "steps": 2,
    "seed": 5,
    "sampler_name": "Euler",
    "cfg_scale": 7,
    "denoising_strength": 0.5,
    "override_settings": {"sd_model_checkpoint": "tiny-sd1"},
}


def post(server, route: str, **body) -> httpx.Response:
    with httpx.Client(timeout=300) as client:
        return client.post(f"{server.url}/sdapi/v1/{route}", json={**COMMON, **body})


def image_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["images"][0])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def hires(**body) -> dict:
    return {"enable_hr": True, "hr_upscaler": "Lanczos", "hr_scale": 2, "width": 64,
            "height": 64, **body}  # fmt: skip


def test_first_pass_image_is_the_first_pass(server):
    """The result is exactly img2img of the Lanczos-upscaled given image at the hires
    size with the same seed, steps and strength: the hires pass alone ran over it. The
    first pass that the seed would have sampled plays no part (it differs from the given
    image, and the plain hires result differs)."""
    given = noise(64, 64, seed=1)
    result = image_of(post(server, "txt2img", **hires(firstpass_image=b64(given))))
    upscaled = given.resize((128, 128), Image.Resampling.LANCZOS)
    over = image_of(post(server, "img2img", init_images=[b64(upscaled)], width=128, height=128))
    assert result.shape == (128, 128, 3)
    assert np.abs(result - over).max() <= 1
    sampled = image_of(post(server, "txt2img", **hires()))
    assert np.abs(result - sampled).mean() > 5


def test_first_pass_image_with_a_latent_upscaler_and_other_size(server):
    """A latent upscaler gets the image's latents; an image of another size is brought to
    the first pass's size first."""
    result = image_of(post(server, "txt2img", **hires(
        hr_upscaler="Latent", firstpass_image=b64(noise(96, 80, seed=2)))))  # fmt: skip
    assert result.shape == (128, 128, 3)


@pytest.mark.parametrize(
    "body",
    [
        hires(firstpass_image="***"),
        hires(firstpass_image=base64.b64encode(b"GIF89a-not-really").decode()),
        {"firstpass_image": b64(noise(64, 64))},  # without hires. fix it has no use
    ],
)
def test_bad_first_pass_image_is_422(server, body):
    response = post(server, "txt2img", **body)
    assert response.status_code == 422, response.text
    assert ["body", "firstpass_image"] in [item["loc"] for item in response.json()["detail"]]
