"""Tiling (seamless textures): the seam, every mode, the tiled VAE decode, the API field,
and the shared model left as it was.

The seam is measured as A1111's issue asks: in a tiled image the left and right columns
(and the top and bottom rows) continue each other like neighbouring columns inside the
image; in an untiled one they are as unrelated as columns half the image apart. The tiny
models paint noise-like pictures, so "continue" is the correlation of the two columns'
pixels, relative to the mean correlation of neighbouring columns.
"""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ServerThread, with_tiny_sd1
from webui.app import create_app
from webui.core.decode import decode_latents
from webui.core.params import Txt2ImgParams
from webui.core.params_img2img import HiresParams, Img2ImgParams
from webui.core.run import MemoryRun
from webui.core.tiling import is_circular, seamless
from webui.imaging.infotext import parse_infotext
from webui.model_manager.tiny import build_tiny_pipeline
from webui.settings import parse_flags


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def seam(image: Image.Image) -> tuple[float, float]:
    """(left/right, top/bottom): how well the opposite edges continue each other, as a
    fraction of how well neighbouring columns (rows) inside the image do."""
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    inner_x = np.mean([_corr(a[:, i], a[:, i + 1]) for i in range(a.shape[1] - 1)])
    inner_y = np.mean([_corr(a[i], a[i + 1]) for i in range(a.shape[0] - 1)])
    return _corr(a[:, 0], a[:, -1]) / inner_x, _corr(a[0], a[-1]) / inner_y


def _assert_seamless(image: Image.Image) -> None:
    horizontal, vertical = seam(image)
    assert horizontal > 0.75 and vertical > 0.75, (horizontal, vertical)


def _assert_seamed(image: Image.Image) -> None:
    horizontal, vertical = seam(image)
    assert horizontal < 0.5 and vertical < 0.5, (horizontal, vertical)


def _all_zero_padded(pipe) -> bool:
    convs = [m for part in (pipe.unet, pipe.vae) for m in part.modules()
             if isinstance(m, torch.nn.Conv2d)]  # fmt: skip
    return bool(convs) and all(conv.padding_mode == "zeros" for conv in convs)


# --- the context manager and the decode ---------------------------------------------------


def test_seamless_restores_the_model_when_the_job_fails():
    pipe = build_tiny_pipeline("sd1")
    with pytest.raises(RuntimeError), seamless(pipe, True):
        assert is_circular(pipe.unet) and is_circular(pipe.vae)
        raise RuntimeError("interrupted")
    assert _all_zero_padded(pipe)
    with seamless(pipe, False):
        assert not is_circular(pipe.unet)


def test_tiled_vae_decode_keeps_the_seam():
    """VAE tiling (large images, low-memory retry) decodes the tiles of a seamless image
    with the other side's latents around them: the edges still continue each other."""
    pipe = build_tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    with seamless(pipe, True):
        latents = pipe(
            "a red fox", num_inference_steps=3, width=96, height=96,
            generator=torch.Generator().manual_seed(1), output_type="latent",
        ).images  # fmt: skip
        whole = decode_latents(pipe, latents)[0]
        tiled = decode_latents(pipe, latents, MemoryRun(low_memory=True))[0]
    assert pipe.vae.use_tiling is False  # tiling was on for the decode only
    _assert_seamless(whole)
    _assert_seamless(tiled)
    difference = np.abs(np.asarray(whole, float) - np.asarray(tiled, float)).mean()
    assert difference < 4  # the same picture, up to the tile blending


# --- jobs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    data = with_tiny_sd1(tmp_path_factory.mktemp("tiling"), tiny_files)
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    app = create_app(flags)
    with ServerThread(app) as srv:
        yield srv, app.state.ctx


BASE = dict(prompt="a stone wall", steps=3, width=64, height=64, seed=11, sampler_name="Euler",
            checkpoint="tiny-sd1", save_images=False)  # fmt: skip


def run(ctx, kind: str = "txt2img", **changes):
    cls = Txt2ImgParams if kind == "txt2img" else Img2ImgParams
    params = cls(**{**BASE, **changes}).validated()
    job = ctx.jobs.submit(kind, params, owner="test")
    assert job.done.wait(300) and job.state == "done", job.error
    return job.result.images


def _pipe(ctx):
    return ctx.models.acquire(ctx.models.resolve("tiny-sd1")).pipe


def test_tiled_txt2img_is_seamless_and_the_model_is_unchanged(server):
    _, ctx = server
    (before,) = run(ctx)
    (tiled,) = run(ctx, tiling=True)
    (after,) = run(ctx)
    _assert_seamed(before.image)
    _assert_seamless(tiled.image)
    assert parse_infotext(tiled.infotext)["Tiling"] == "True"
    assert "Tiling" not in parse_infotext(before.infotext)
    assert _all_zero_padded(_pipe(ctx))  # the shared model is back as it was
    assert np.array_equal(np.asarray(before.image), np.asarray(after.image))


def test_tiling_applies_to_the_hires_pass(server):
    _, ctx = server
    hires = HiresParams(scale=1.5, denoising_strength=0.6)
    (image,) = run(ctx, tiling=True, hires=hires)
    assert image.image.size == (96, 96)
    _assert_seamless(image.image)
    assert _all_zero_padded(_pipe(ctx))


def test_tiling_applies_to_img2img_and_inpainting(server):
    _, ctx = server
    init = Image.new("RGB", (64, 64), (120, 90, 60))
    (image,) = run(ctx, "img2img", tiling=True, init_images=(init,), denoising_strength=1.0)
    _assert_seamless(image.image)
    (untiled,) = run(ctx, "img2img", init_images=(init,), denoising_strength=1.0)
    _assert_seamed(untiled.image)
    mask = Image.new("L", (64, 64), 255)
    (inpainted,) = run(ctx, "img2img", tiling=True, init_images=(init,), mask=mask,
                       mask_blur_x=0, mask_blur_y=0, denoising_strength=1.0)  # fmt: skip
    _assert_seamless(inpainted.image)
    assert parse_infotext(inpainted.infotext)["Tiling"] == "True"
    assert _all_zero_padded(_pipe(ctx))


# --- the API ----------------------------------------------------------------------------------


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_api_tiling_and_its_infotext(server):
    srv, ctx = server
    body = {"prompt": "a stone wall", "steps": 3, "width": 64, "height": 64, "seed": 11,
            "sampler_name": "Euler", "tiling": True}  # fmt: skip
    response = httpx.post(f"{srv.url}/sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text
    image = _image(response.json()["images"][0])
    _assert_seamless(image)
    info = httpx.post(f"{srv.url}/sdapi/v1/png-info", timeout=60,
                      json={"image": response.json()["images"][0]}).json()  # fmt: skip
    assert info["parameters"]["Tiling"] == "True"
    # the infotext field alone turns it on (A1111 1.10's `infotext` request field)
    again = {k: v for k, v in body.items() if k != "tiling"} | {"infotext": info["info"]}
    response = httpx.post(f"{srv.url}/sdapi/v1/txt2img", json=again, timeout=300)
    assert response.status_code == 200, response.text
    assert np.array_equal(np.asarray(_image(response.json()["images"][0])), np.asarray(image))
    init = response.json()["images"][0]
    response = httpx.post(
        f"{srv.url}/sdapi/v1/img2img",
        timeout=300,
        json={**body, "init_images": [init], "denoising_strength": 0.5},
    )
    assert response.status_code == 200, response.text  # was 501
    assert "Tiling: True" in response.json()["info"]
    assert _all_zero_padded(_pipe(ctx))
