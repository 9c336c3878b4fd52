"""Soft inpainting (A1111 1.7's mask-aware blending) and img2img's `latent_mask`.

One server with the tiny SD 1.x checkpoint serves the module; 64x64, 2-4 steps.
"""

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
    data = tmp_path_factory.mktemp("soft-inpaint")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], ckpt / "tiny-sd1.safetensors")
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        yield srv


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def square_mask(box, size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(server, **body) -> httpx.Response:
    payload = {
        "prompt": "moss",
        "steps": 3,
        "width": 64,
        "height": 64,
        "seed": 3,
        "init_images": [b64(noise(64, 64))],
        "sampler_name": "Euler",
        "denoising_strength": 1.0,
        "inpainting_fill": 1,
        "inpaint_full_res": False,
        "mask_blur": 0,
        "override_settings": {"sd_model_checkpoint": "tiny-sd1"},
        **body,
    }
    with httpx.Client(timeout=300) as client:
        return client.post(f"{server.url}/sdapi/v1/img2img", json=payload)


def image_of(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


# --- latent_mask ---------------------------------------------------------------------------


def test_latent_mask_drives_the_latent_blending(server):
    """A black latent mask puts the original latents back at every step (the last one
    without noise): the repainted area no longer depends on the seed, while with only
    `mask` it does. The composite still follows `mask` (outside it: the original)."""
    mask = b64(square_mask((16, 16, 48, 48)))
    black = b64(Image.new("L", (64, 64), 0))
    kept = [arr(image_of(post(server, mask=mask, latent_mask=black, seed=s))) for s in (3, 4)]
    free = [arr(image_of(post(server, mask=mask, seed=s))) for s in (3, 4)]
    inside = (slice(16, 48), slice(16, 48))
    assert np.array_equal(kept[0][inside], kept[1][inside])
    assert np.abs(free[0][inside] - free[1][inside]).mean() > 1
    assert np.array_equal(kept[0][:8], arr(noise(64, 64))[:8])  # outside the mask


def test_bad_latent_mask_is_422(server):
    response = post(server, mask=b64(square_mask((0, 0, 8, 8))), latent_mask="***")
    assert response.status_code == 422, response.text
    assert "latent_mask" in response.text
    small = b64(Image.new("L", (32, 32), 255))
    response = post(server, mask=b64(square_mask((0, 0, 8, 8))), latent_mask=small)
    assert response.status_code == 422 and "latent_mask" in response.text
    response = post(server, latent_mask=b64(Image.new("L", (64, 64), 255)))  # no mask
    assert response.status_code == 422 and "latent_mask" in response.text
