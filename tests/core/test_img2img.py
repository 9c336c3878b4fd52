"""img2img, inpainting, outpainting, SD upscale and batch folders through the job queue.

One context with the tiny SD 1.x, SD 1.x inpainting (9-channel) and SDXL checkpoints and a
tiny ESRGAN serves the module; jobs are what the UI and API submit. 64x64, few steps.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import shutil
from dataclasses import replace

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerThread
from tests.tiny_upscaler import write_tiny_esrgan
from webui.app import create_app
from webui.core.params import ParamError
from webui.core.params_img2img import Img2ImgParams, SDUpscaleParams
from webui.imaging import masks as geometry
from webui.imaging.infotext import parse_infotext, read_infotext_from_image
from webui.imaging.upscaler_list import UpscalerCatalog
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_files):
    root = tmp_path_factory.mktemp("img2img")
    ckpt = root / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    for family in ("sd1", "sd1-inpaint", "sdxl"):
        shutil.copy(tiny_files[family], ckpt / f"tiny-{family}.safetensors")
    write_tiny_esrgan(root / "models" / "ESRGAN" / "4x-tiny.pth", scale=4)
    return root


@pytest.fixture(scope="module")
def server(data):
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    app = create_app(flags)
    with ServerThread(app) as srv:
        yield srv, app.state.ctx


@pytest.fixture(scope="module")
def ctx(server):
    return server[1]


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def square_mask(size, box) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def run(ctx, **changes):
    base = dict(
        prompt="a stone wall",
        negative_prompt="blur",
        steps=4,
        width=64,
        height=64,
        seed=7,
        init_images=(noise(64, 64),),
        checkpoint="tiny-sd1",
        denoising_strength=0.75,
        save_images=False,
    )
    params = Img2ImgParams(**{**base, **changes}).validated().with_seed()
    job = ctx.jobs.submit("img2img", params, owner="test")
    assert job.done.wait(300), "job did not finish"
    assert job.state == "done", job.error
    return job


def test_strength_zero_returns_the_init_image(ctx):
    init = noise(64, 64, seed=1)
    (result,) = run(ctx, init_images=(init,), denoising_strength=0.0).result.images
    assert np.array_equal(arr(result.image), arr(init))
    assert "Denoising strength: 0," in result.infotext


def test_strength_changes_the_image_and_saves(ctx, data):
    init = noise(64, 64, seed=2)
    job = run(ctx, init_images=(init,), save_images=True, seed=11)
    (result,) = job.result.images
    assert np.abs(arr(result.image) - arr(init)).mean() > 5
    path = data / "outputs" / "img2img-images" / dt.date.today().isoformat() / "00000-11.png"
    assert result.path == str(path)
    with Image.open(path) as im:
        fields = parse_infotext(read_infotext_from_image(im))
    assert fields["Denoising strength"] == 0.75
    assert fields["Prompt"] == "a stone wall" and fields["Seed"] == 11
    assert fields["Model"] == "tiny-sd1" and fields["Size"] == "64x64"


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_resize_modes_shape_the_output(ctx, mode):
    init = noise(96, 48, seed=3)
    (result,) = run(
        ctx, init_images=(init,), resize_mode=mode, width=64, height=80, denoising_strength=0.0
    ).result.images
    expected = geometry.resize_image(mode, init, 64, 80)
    assert result.image.size == (64, 80)
    assert np.array_equal(arr(result.image), arr(expected))


def test_latent_resize_mode_and_batch(ctx):
    job = run(
        ctx, init_images=(noise(32, 48),), resize_mode=3, width=64, height=96, batch_size=2, seed=20
    )
    grid, *images = job.result.images
    assert grid.grid and grid.image.size == (128, 96)
    assert [g.image.size for g in images] == [(64, 96), (64, 96)]
    assert [g.seed for g in images] == [20, 21]


def test_inpaint_keeps_pixels_outside_the_mask(ctx):
    init = noise(64, 64, seed=4)
    mask = square_mask((64, 64), (24, 24, 40, 40))
    (result,) = run(
        ctx, init_images=(init,), mask=mask, mask_blur_x=2, mask_blur_y=2, denoising_strength=1.0
    ).result.images
    out, before = arr(result.image), arr(init)
    far = np.ones((64, 64), bool)
    far[16:48, 16:48] = False  # more than 4 blur sigmas away from the mask
    assert np.abs(out - before)[far].max() <= 1
    assert np.abs(out - before)[26:38, 26:38].mean() > 20
    assert "Mask blur: 2" in result.infotext


def test_inpaint_only_masked_pastes_back_in_place(ctx):
    init = noise(128, 96, seed=5)
    mask = square_mask((128, 96), (80, 8, 104, 32))
    (result,) = run(
        ctx,
        init_images=(init,),
        mask=mask,
        mask_blur_x=0,
        mask_blur_y=0,
        inpaint_full_res=True,
        inpaint_full_res_padding=8,
        inpainting_fill=0,
        denoising_strength=1.0,
    ).result.images
    assert result.image.size == (128, 96)  # the original size, not the processing size
    changed = np.abs(arr(result.image) - arr(init)).max(axis=2) > 1
    ys, xs = np.nonzero(changed)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (80, 8, 103, 31)  # exactly the mask
    assert changed[8:32, 80:104].mean() > 0.9
    assert "Inpaint area: Only masked" in result.infotext
    assert "Masked content: fill" in result.infotext


@pytest.mark.parametrize("fill", [2, 3])
def test_latent_masked_content(ctx, fill):
    init = noise(64, 64, seed=6)
    mask = square_mask((64, 64), (0, 0, 32, 64))
    (result,) = run(
        ctx,
        init_images=(init,),
        mask=mask,
        mask_blur_x=0,
        mask_blur_y=0,
        inpainting_fill=fill,
        steps=2,
    ).result.images
    diff = np.abs(arr(result.image) - arr(init))
    assert diff[:, 36:].max() <= 1 and diff[:, :28].mean() > 5
    assert f"Masked content: {geometry.MASKED_CONTENT[fill]}" in result.infotext


def test_nine_channel_model_uses_the_inpainting_pipeline(ctx):
    init = noise(64, 64, seed=7)
    mask = square_mask((64, 64), (8, 8, 40, 40))
    job = run(
        ctx,
        checkpoint="tiny-sd1-inpaint",
        init_images=(init,),
        mask=mask,
        mask_blur_x=0,
        mask_blur_y=0,
        denoising_strength=1.0,
    )
    assert job.result.model_family == "SD 1.x inpainting"
    (result,) = job.result.images
    diff = np.abs(arr(result.image) - arr(init))
    assert diff[44:, :].max() <= 1 and diff[:, 44:].max() <= 1
    assert diff[10:38, 10:38].mean() > 5
    lease = ctx.models.acquire(ctx.models.resolve("tiny-sd1-inpaint"))
    assert type(lease.pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert lease.pipe.unet.config.in_channels == 9
    assert not lease.model.variants  # no img2img view was made: the 9-channel path ran


def test_sdxl_inpaint(ctx):
    init = noise(64, 64, seed=8)
    mask = square_mask((64, 64), (32, 0, 64, 64))
    job = run(
        ctx,
        checkpoint="tiny-sdxl",
        init_images=(init,),
        mask=mask,
        mask_blur_x=0,
        mask_blur_y=0,
        steps=2,
    )
    diff = np.abs(arr(job.result.images[0].image) - arr(init))
    assert diff[:, :28].max() <= 1 and diff[:, 36:].mean() > 5


def test_outpainting_grows_the_canvas(ctx):
    init = noise(48, 64, seed=9)
    (result,) = run(
        ctx,
        init_images=(init,),
        outpaint=(0, 16, 0, 0),
        width=64,
        height=64,
        mask_blur_x=2,
        mask_blur_y=2,
        inpainting_fill=0,
        denoising_strength=1.0,
    ).result.images
    assert result.image.size == (64, 64)
    diff = np.abs(arr(result.image)[:, :48] - arr(init))
    assert diff[:, :36].max() <= 1  # the old image, away from the blended seam
    assert "Outpaint right: 16" in result.infotext


def test_sd_upscale(ctx):
    catalog = UpscalerCatalog(ctx.flags.models_dir)
    sd = SDUpscaleParams(upscaler=catalog.resolve("4x-tiny"), scale=2.0, overlap=16)
    job = run(
        ctx,
        init_images=(noise(56, 40),),
        sd_upscale=sd,
        steps=2,
        batch_size=2,
        denoising_strength=0.3,
        seed=100,
    )
    (result,) = job.result.images
    assert result.image.size == (112, 80)
    fields = parse_infotext(result.infotext)
    assert fields["SD upscale overlap"] == 16 and fields["SD upscale upscaler"] == "4x-tiny"
    assert fields["Seed"] == 100


def test_sd_upscale_refuses_a_too_small_result():
    sd = SDUpscaleParams(scale=1.0, overlap=8)
    with pytest.raises(ParamError, match="smaller than one tile"):
        Img2ImgParams(init_images=(noise(32, 32),), width=64, height=64, sd_upscale=sd).validated()


def test_batch_folder_with_masks(ctx, tmp_path):
    source, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    source.mkdir(), masks.mkdir()
    noise(64, 64, 1).save(source / "a.png")
    noise(64, 64, 2).save(source / "b.jpg")
    (source / "notes.txt").write_text("not an image")
    square_mask((64, 64), (0, 0, 32, 32)).save(masks / "only.png")  # one mask for all
    job = run(
        ctx,
        init_images=(),
        batch_input_dir=str(source),
        batch_output_dir=str(out),
        batch_mask_dir=str(masks),
        steps=2,
        mask_blur_x=0,
        mask_blur_y=0,
    )
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    with Image.open(out / "a.png") as im:
        assert "Denoising strength: 0.75" in read_infotext_from_image(im)
        diff = np.abs(arr(im) - arr(noise(64, 64, 1)))
    assert diff[40:, 40:].max() <= 1 and diff[:28, :28].mean() > 5
    assert len(job.result.images) == 2


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"init_images": ()}, "init_images"),
        ({"mask": square_mask((32, 32), (0, 0, 8, 8))}, "mask"),
        ({"mask": Image.new("L", (64, 64), 0)}, "mask"),
        ({"mask": Image.new("L", (64, 64), 255), "inpainting_mask_invert": True}, "mask"),
        ({"denoising_strength": 1.5}, "denoising_strength"),
        ({"resize_mode": 4}, "resize_mode"),
        ({"init_images": (Image.new("RGB", (4097, 4097)),)}, "init_images"),
        ({"batch_input_dir": "/no/such/folder"}, "batch_input_dir"),
    ],
)
def test_bad_params_name_the_field(changes, field):
    base = Img2ImgParams(init_images=(noise(64, 64),), width=64, height=64)
    with pytest.raises(ParamError) as info:
        replace(base, **changes).validated()
    assert info.value.field == field


# --- the API --------------------------------------------------------------------------------


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def post(server, **body):
    srv, _ = server
    payload = {
        "prompt": "moss",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 3,
        "init_images": [b64(noise(64, 64))],
        "sampler_name": "Euler",
        "override_settings": {"sd_model_checkpoint": "tiny-sd1"},
        **body,
    }
    with httpx.Client(timeout=300) as client:
        return client.post(f"{srv.url}/sdapi/v1/img2img", json=payload)


def test_api_img2img_inpaint(server, data):
    mask = square_mask((64, 64), (0, 0, 32, 32))
    response = post(
        server,
        mask=b64(mask),
        denoising_strength=0.6,
        save_images=True,
        inpainting_fill=1,
        inpaint_full_res=False,
        mask_blur=0,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    info = __import__("json").loads(body["info"])
    assert info["denoising_strength"] == 0.6 and info["all_seeds"] == [3]
    assert body["parameters"]["init_images"] is None  # not echoed unless include_init_images
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    fields = parse_infotext(read_infotext_from_image(image))
    assert fields["Denoising strength"] == 0.6 and fields["Sampler"] == "Euler"
    diff = np.abs(arr(image) - arr(noise(64, 64)))
    assert diff[36:, 36:].max() <= 1
    saved = list((data / "outputs" / "img2img-images").glob("*/*-3.png"))
    assert len(saved) == 1


def test_api_img2img_batch_returns_and_saves_its_grid(server, data):
    response = post(server, seed=30, batch_size=2, save_images=True, denoising_strength=0.5)
    assert response.status_code == 200, response.text
    body = response.json()
    info = __import__("json").loads(body["info"])
    assert len(body["images"]) == 3 and info["index_of_first_image"] == 1
    grid = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert grid.size == (128, 64)
    fields = parse_infotext(read_infotext_from_image(grid))
    assert (fields["Seed"], fields["Denoising strength"]) == (30, 0.5)
    (saved,) = (data / "outputs" / "img2img-grids").glob("*/grid-*.png")
    with Image.open(saved) as on_disk:
        assert read_infotext_from_image(on_disk) == read_infotext_from_image(grid)


def test_api_sd_upscale_script(server):
    response = post(
        server,
        script_name="SD upscale",
        script_args=["", 16, "4x-tiny", 2],
        init_images=[b64(noise(40, 40))],
        denoising_strength=0.2,
    )
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (80, 80)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"init_images": [base64.b64encode(b"GIF89a-not-really").decode()]}, "init_images"),
        ({"init_images": ["***"]}, "init_images"),
        ({"init_images": []}, "init_images"),
        ({"mask": b64(Image.new("L", (64, 64), 0))}, "mask"),
        ({"mask": b64(Image.new("L", (32, 64), 255))}, "mask"),
        ({"init_images": [b64(Image.new("RGB", (4097, 4097)))]}, "init_images"),
        ({"denoising_strength": 2}, "denoising_strength"),
        ({"script_name": "SD upscale", "script_args": ["", 8, "nope", 2]}, "script_args"),
        ({"script_name": "no such script"}, "script_name"),
        ({"script_name": "X/Y/Z plot"}, "x_values"),  # found, and its empty X values refused
    ],
)
def test_api_bad_input_is_422_and_saves_nothing(server, data, body, loc):
    before = sorted((data / "outputs").rglob("*.png")) if (data / "outputs").exists() else []
    response = post(server, save_images=True, **body)
    assert response.status_code == 422, response.text
    assert loc in [str(p) for item in response.json()["detail"] for p in item["loc"]]
    after = sorted((data / "outputs").rglob("*.png")) if (data / "outputs").exists() else []
    assert after == before
    srv, _ = server
    assert httpx.get(f"{srv.url}/sdapi/v1/latent-upscale-modes").status_code == 200


def _fields(response) -> dict:
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    return parse_infotext(read_infotext_from_image(image))


def test_api_noise_multiplier_and_extra_noise_in_the_infotext(server):
    settings = {"sd_model_checkpoint": "tiny-sd1", "img2img_extra_noise": 0.25}
    response = post(server, initial_noise_multiplier=0.5, override_settings=settings)
    fields = _fields(response)
    assert fields["Noise multiplier"] == 0.5 and fields["Extra noise"] == 0.25
    info = __import__("json").loads(response.json()["info"])
    assert info["extra_generation_params"]["Noise multiplier"] == 0.5
    plain = _fields(post(server, initial_noise_multiplier=1.0))
    assert "Noise multiplier" not in plain and "Extra noise" not in plain  # A1111: only if used
    # the infotext request field brings both back (A1111 1.10 maps them to the options)
    text = "moss\nSteps: 2, Seed: 3, Noise multiplier: 0.5, Extra noise: 0.25, Size: 64x64"
    again = _fields(post(server, infotext=text))
    assert again["Noise multiplier"] == 0.5 and again["Extra noise"] == 0.25


def test_api_variation_seed_in_img2img(server):
    response = post(server, seed=3, subseed=40, subseed_strength=0.3, batch_size=2)
    fields = _fields(response)
    assert (fields["Seed"], fields["Variation seed"]) == (3, 40)
    assert fields["Variation seed strength"] == 0.3
    info = __import__("json").loads(response.json()["info"])
    assert info["all_seeds"] == [3, 3] and info["all_subseeds"] == [40, 41]


def test_api_bad_noise_multiplier_is_422(server):
    response = post(server, initial_noise_multiplier=7)
    assert response.status_code == 422, response.text
    assert "initial_noise_multiplier" in response.text


# --- pixel geometry (no model) --------------------------------------------------------------


def test_split_and_combine_grid_round_trip():
    image = noise(150, 100, seed=12)
    grid = geometry.split_grid(image, 64, 64, 16)
    assert len(grid.tiles()) == 3 * 2
    assert all(tile.size == (64, 64) for tile in grid.tiles())
    assert np.array_equal(arr(geometry.combine_grid(grid)), arr(image))  # blends of equals


def test_crop_region_grows_to_the_processing_ratio():
    mask = square_mask((200, 100), (90, 40, 110, 50))
    box = geometry.crop_region(mask, 4)
    assert box == (86, 36, 114, 54)
    x1, y1, x2, y2 = geometry.expand_crop_region(box, 64, 64, 200, 100)
    assert (x2 - x1) == (y2 - y1) and x1 <= 86 and x2 >= 114
    assert geometry.crop_region(Image.new("L", (8, 8)), 4) is None
