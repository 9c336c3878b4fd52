"""Hires. fix: the size arithmetic, latent and model upscalers, infotext, and the API fields."""

from __future__ import annotations

import base64
import io
import json
import shutil

import httpx
import pytest
from PIL import Image

from tests.conftest import ServerThread
from tests.tiny_upscaler import write_tiny_esrgan
from webui.app import create_app
from webui.core.params import ParamError, Txt2ImgParams
from webui.core.params_img2img import HiresParams
from webui.imaging.infotext import parse_infotext
from webui.imaging.upscaler_list import UpscalerCatalog, UpscalerRef
from webui.settings import parse_flags


def test_size_by_scale_and_by_resize():
    assert HiresParams(scale=1.5).size(512, 768).final == (768, 1152)
    assert HiresParams(resize_x=1024).size(512, 768).final == (1024, 1536)
    assert HiresParams(resize_y=1024).size(512, 768).final == (680, 1024)
    # both sides: upscale to cover 1024x1024, then trim the latents to it (A1111)
    size = HiresParams(resize_x=1024, resize_y=1024).size(512, 768)
    assert (size.width, size.height) == (1024, 1536)
    assert size.latent_box(8) == (192, 128, 32, 160, 0, 128)
    assert size.final == (1024, 1024)


@pytest.mark.parametrize(
    ("hires", "field"),
    [
        (HiresParams(scale=0.5), "hr_scale"),
        (HiresParams(scale=80.0), "hr_scale"),
        (HiresParams(resize_x=8192), "hr_resize_x"),
        (HiresParams(denoising_strength=-0.1), "denoising_strength"),
        (HiresParams(steps=500), "hr_second_pass_steps"),
        (HiresParams(steps=51, sampler_name="LCM"), "hr_second_pass_steps"),
        (HiresParams(sampler_name="Nope"), "hr_sampler_name"),
        (HiresParams(upscaler=UpscalerRef("4x-missing")), "hr_upscaler"),
    ],
)
def test_bad_hires_params_name_the_field(hires, field):
    with pytest.raises(ParamError) as info:
        Txt2ImgParams(width=512, height=512, hires=hires).validated()
    assert info.value.field == field


@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DDIM", "DPM++ SDE", "LCM"])
def test_one_hires_step_is_accepted(sampler):
    hires = HiresParams(steps=1, denoising_strength=1.0, sampler_name=sampler)
    params = Txt2ImgParams(width=64, height=64, steps=1, sampler_name=sampler, hires=hires)
    assert params.validated().hires.steps == 1


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    data = tmp_path_factory.mktemp("hires")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    for family in ("sd1", "sd1-inpaint"):
        shutil.copy(tiny_files[family], ckpt / f"tiny-{family}.safetensors")
    write_tiny_esrgan(data / "models" / "ESRGAN" / "4x-tiny.pth", scale=4)
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    app = create_app(flags)
    with ServerThread(app) as srv:
        yield srv, app.state.ctx


def run(ctx, hires: HiresParams, **changes):
    base = dict(
        prompt="a castle",
        negative_prompt="fog",
        steps=3,
        width=64,
        height=64,
        seed=5,
        checkpoint="tiny-sd1",
        save_images=False,
        hires=hires,
    )
    params = Txt2ImgParams(**{**base, **changes}).validated()
    job = ctx.jobs.submit("txt2img", params, owner="test")
    assert job.done.wait(300) and job.state == "done", job.error
    return [g for g in job.result.images if not g.grid]  # a batch's grid is not tested here


def test_latent_hires_doubles_the_size(server):
    _, ctx = server
    (image,) = run(ctx, HiresParams(scale=2.0, denoising_strength=0.5))
    assert image.image.size == (128, 128)
    fields = parse_infotext(image.infotext)
    assert fields["Size"] == "64x64"  # the first pass, as A1111 writes it
    assert fields["Hires upscale"] == 2 and fields["Hires upscaler"] == "Latent"
    assert fields["Denoising strength"] == 0.5
    assert "Hires steps" not in fields and "Hires sampler" not in fields


def test_model_upscaler_resize_to_with_own_sampler_and_prompt(server):
    _, ctx = server
    ref = UpscalerCatalog(ctx.flags.models_dir).resolve("4x-tiny", latent=True)
    hires = HiresParams(
        resize_x=96,
        resize_y=80,
        upscaler=ref,
        steps=2,
        sampler_name="Euler",
        prompt="a castle, detailed",
    )
    images = run(ctx, hires, batch_size=2, sampler_name="DPM++ 2M")
    assert [g.image.size for g in images] == [(96, 80), (96, 80)]
    fields = parse_infotext(images[0].infotext)
    assert fields["Hires resize"] == "96x80" and fields["Hires steps"] == 2
    assert fields["Hires upscaler"] == "4x-tiny" and fields["Hires sampler"] == "Euler"
    assert fields["Hires prompt"] == "a castle, detailed"
    assert images[0].infotext.index("Hires prompt") < images[0].infotext.index("Hires resize")


def test_hires_on_a_nine_channel_model(server):
    _, ctx = server
    (image,) = run(
        ctx, HiresParams(scale=1.5, upscaler=UpscalerRef("Lanczos")), checkpoint="tiny-sd1-inpaint"
    )
    assert image.image.size == (96, 96)


def _post(srv, **changes):
    body = {
        "prompt": "a castle",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 9,
        "enable_hr": True,
        "hr_scale": 1.5,
        "hr_upscaler": "Latent (bicubic antialiased)",
        "denoising_strength": 0.4,
        "hr_sampler_name": "Use same sampler",
        "hr_checkpoint_name": "Use same checkpoint",
        "sampler_name": "Euler",
        "override_settings": {"sd_model_checkpoint": "tiny-sd1"},
        **changes,
    }
    return httpx.post(f"{srv.url}/sdapi/v1/txt2img", json=body, timeout=300)


def test_api_enable_hr(server):
    srv, _ = server
    response = _post(srv)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (96, 96)
    info = json.loads(response.json()["info"])
    assert info["denoising_strength"] == 0.4
    assert info["extra_generation_params"]["Hires upscaler"] == "Latent (bicubic antialiased)"
    assert info["extra_generation_params"]["Hires upscale"] == 1.5


def test_api_enable_hr_with_a_model_upscaler(server):
    srv, _ = server
    response = _post(srv, hr_upscaler="4x-tiny", hr_scale=2, hr_second_pass_steps=2)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (128, 128)


@pytest.mark.parametrize(
    ("changes", "status", "field"),
    [
        ({"hr_upscaler": "nope"}, 422, "hr_upscaler"),
        ({"hr_scale": 0.5}, 422, "hr_scale"),
        ({"hr_resize_x": 20}, 422, "hr_resize_x"),
        ({"hr_sampler_name": "Nope"}, 422, "hr_sampler_name"),
        ({"hr_checkpoint_name": "other"}, 422, "hr_checkpoint_name"),
    ],
)
def test_api_bad_hires_fields(server, changes, status, field):
    srv, _ = server
    response = _post(srv, **changes)
    assert response.status_code == status, response.text
    assert field in json.dumps(response.json()["detail"])


def test_enable_hr_false_ignores_the_hires_fields(server):
    srv, _ = server
    response = _post(srv, enable_hr=False, hr_upscaler="nope", hr_scale=0.1)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (64, 64)
