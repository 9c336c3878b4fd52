"""Upscalers and the Upscale (extras) tab's job: spandrel models, tiling, Lanczos/Nearest.

A tiny random-weight ESRGAN in the Real-ESRGAN key layout is written into models/ESRGAN
(and a 2x one as .safetensors into models/RealESRGAN); the path under test is the user's:
folder scan, name = file stem, spandrel load, tiled run, save, read back. The API part
runs a real server (no checkpoint is needed to upscale).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerThread
from tests.tiny_upscaler import write_tiny_esrgan
from webui.app import create_app
from webui.context import build_context
from webui.core.params import ParamError
from webui.core.params_img2img import ExtrasParams
from webui.imaging.infotext import parse_infotext, read_infotext_from_image
from webui.imaging.upscaler_list import UnknownUpscalerError, UpscalerCatalog, UpscalerRef
from webui.imaging.upscalers import UpscalerCache, UpscalerError, run_tiled
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("upscale") / "models"
    write_tiny_esrgan(root / "ESRGAN" / "4x-tiny.pth", scale=4)
    write_tiny_esrgan(root / "RealESRGAN" / "tiny-x2.safetensors", scale=2, seed=1)
    return root


@pytest.fixture(scope="module")
def cache() -> UpscalerCache:
    return UpscalerCache()


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def b64png(image: Image.Image, **info) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **info)
    return base64.b64encode(buffer.getvalue()).decode()


def test_catalog_names_are_file_stems(models_dir):
    catalog = UpscalerCatalog(models_dir)
    assert catalog.names() == ["None", "Lanczos", "Nearest", "4x-tiny", "tiny-x2"]
    assert catalog.names(latent=True)[0] == "Latent"
    assert catalog.resolve("4X-TINY") == UpscalerRef(
        "4x-tiny", str(models_dir / "ESRGAN" / "4x-tiny.pth")
    )
    assert catalog.resolve("lanczos") == UpscalerRef("Lanczos")
    assert catalog.resolve("Latent (bicubic)", latent=True).is_latent
    with pytest.raises(UnknownUpscalerError, match="only in hires"):
        catalog.resolve("Latent")
    with pytest.raises(UnknownUpscalerError, match="no upscaler named 'nope'"):
        catalog.resolve("nope")
    assert [f.scale_guess for f in catalog.model_files()] == [4, 2]


def test_model_scale_is_exact(models_dir, cache):
    catalog = UpscalerCatalog(models_dir)
    image = noise_image(40, 24)
    four = cache.upscale(image, 4, catalog.resolve("4x-tiny"))
    assert four.size == (160, 96)
    two = cache.upscale(image, 2, catalog.resolve("tiny-x2"))
    assert two.size == (80, 48)
    # 3x with a 4x model: one pass, then Lanczos down to the exact size
    assert cache.upscale(image, 3, catalog.resolve("4x-tiny")).size == (120, 72)
    # 8x with a 2x model: three passes
    assert cache.upscale(image, 8, catalog.resolve("tiny-x2")).size == (320, 192)
    assert np.asarray(four).std() > 10  # the model does something, not a flat image


def test_tiling_matches_untiled(models_dir, cache):
    descriptor = cache.load(models_dir / "ESRGAN" / "4x-tiny.pth")
    image = noise_image(44, 36, seed=3)
    whole = np.asarray(run_tiled(descriptor, image, tile=0)).astype(int)
    # context beyond the receptive field: the same pixels
    tiled = np.asarray(run_tiled(descriptor, image, tile=16, overlap=24)).astype(int)
    assert np.abs(whole - tiled).max() <= 1
    # A1111's default overlap of 8: seams differ by a rounding step at most, rarely
    small = np.asarray(run_tiled(descriptor, image, tile=16, overlap=8)).astype(int)
    assert np.abs(whole - small).max() <= 3
    assert np.abs(whole - small).mean() < 0.05


def test_lanczos_and_nearest_need_no_model():
    cache = UpscalerCache()
    image = noise_image(10, 6)
    lanczos = cache.upscale(image, 2.5, UpscalerRef("Lanczos"))
    assert lanczos.size == (25, 15)
    nearest = cache.upscale(image, 2, UpscalerRef("Nearest"))
    assert np.array_equal(np.asarray(nearest)[::2, ::2], np.asarray(image))
    assert not cache._models  # nothing was loaded


def test_unreadable_model_file_fails_clearly(tmp_path, cache):
    bad = tmp_path / "ESRGAN" / "broken.pth"
    bad.parent.mkdir()
    bad.write_bytes(b"not a model")
    with pytest.raises(UpscalerError, match="broken.pth"):
        cache.upscale(noise_image(8, 8), 2, UpscalerRef("broken", str(bad)))


def test_extras_params_are_checked():
    image = noise_image(8, 8)
    with pytest.raises(ParamError, match="choose an upscaler"):
        ExtrasParams(images=((image, "a"),)).validated()
    with pytest.raises(ParamError) as info:
        ExtrasParams(
            images=((image, "a"),), upscaler_1=UpscalerRef("Lanczos"), upscaling_resize=9.0
        ).validated()
    assert info.value.field == "upscaling_resize"
    with pytest.raises(ParamError, match="hires"):
        ExtrasParams(images=((image, "a"),), upscaler_1=UpscalerRef("Latent")).validated()


@pytest.fixture
def ctx(tmp_path, models_dir):
    import shutil

    shutil.copytree(models_dir, tmp_path / "models")
    context = build_context(parse_flags(["--data-dir", str(tmp_path), "--no-download-sd-model"]))
    yield context
    context.close()


def test_extras_job_saves_with_postprocess_infotext(ctx, tmp_path):
    catalog = UpscalerCatalog(ctx.flags.models_dir)
    source = noise_image(20, 12)
    source.info["parameters"] = "a cat\nSteps: 20, Sampler: Euler, Seed: 5, Size: 20x12"
    params = ExtrasParams(
        images=((source, "cat.png"),),
        upscaling_resize=4.0,
        upscaler_1=catalog.resolve("4x-tiny"),
        upscaler_2=catalog.resolve("Lanczos"),
        extras_upscaler_2_visibility=0.25,
    ).validated()
    job = ctx.jobs.submit("extras", params, owner="test")
    assert job.done.wait(120) and job.state == "done", job.error
    (result,) = job.result.images
    saved = Path(result.path)
    assert saved.parent.parent == tmp_path / "outputs" / "extras-images"
    assert saved.name == "00000.png"
    with Image.open(saved) as im:
        assert im.size == (80, 48)
        fields = parse_infotext(read_infotext_from_image(im))
    assert fields["Prompt"] == "a cat" and fields["Seed"] == 5  # the source's own parameters
    assert fields["Postprocess upscale by"] == 4
    assert fields["Postprocess upscaler"] == "4x-tiny"
    assert fields["Postprocess upscaler 2"] == "Lanczos"
    assert fields["Postprocess upscaler 2 visibility"] == 0.25


def test_extras_scale_to_with_crop_and_output_folder(ctx, tmp_path):
    out = tmp_path / "upscaled"
    params = ExtrasParams(
        images=((noise_image(20, 10), "wide.png"), (noise_image(10, 10), "square.png")),
        resize_mode=1,
        upscaling_resize_w=30,
        upscaling_resize_h=30,
        upscaling_crop=True,
        upscaler_1=UpscalerRef("Lanczos"),
        output_dir=str(out),
    ).validated()
    job = ctx.jobs.submit("extras", params, owner="test")
    assert job.done.wait(60) and job.state == "done", job.error
    assert sorted(p.name for p in out.iterdir()) == ["square.png", "wide.png"]
    with Image.open(out / "wide.png") as im:
        assert im.size == (30, 30)
        assert "Postprocess crop to: 30x30" in read_infotext_from_image(im)
    assert not (tmp_path / "outputs" / "extras-images").exists()


@pytest.mark.parametrize("folder", [False, True], ids=["outputs", "output-folder"])
def test_an_extras_rerun_after_a_restart_writes_no_second_file(ctx, tmp_path, folder):
    """The job store's rerun (issue 14): the files the first attempt recorded are kept."""
    from webui.core.jobs import Job

    out = tmp_path / "upscaled" if folder else tmp_path / "outputs"
    params = ExtrasParams(
        images=((noise_image(8, 8), "a.png"), (noise_image(8, 8, seed=1), "b.png")),
        upscaler_1=UpscalerRef("Lanczos"),
        output_dir=str(out) if folder else "",
    ).validated()
    first = ctx.jobs.submit("extras", params, owner="test")
    assert first.done.wait(60) and first.state == "done", first.error
    before = sorted(out.rglob("*.png"))
    recorded = ctx.job_store.get(first.id).images
    assert [i.path for i in recorded] == first.saved and len(before) == 2
    rerun = Job("extras", params, owner="test", options=first.options,
                earlier=dict(enumerate(recorded)))  # fmt: skip
    ctx.jobs._slots[0].executor.run(rerun)  # what the worker does with a restored job
    assert sorted(out.rglob("*.png")) == before and rerun.saved == first.saved


@pytest.fixture(scope="module")
def api(tmp_path_factory, models_dir):
    import shutil

    data = tmp_path_factory.mktemp("upscale-api")
    shutil.copytree(models_dir, data / "models")
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as server, httpx.Client(timeout=120) as client:
        yield server.url + "/sdapi/v1", client, data


def test_api_upscaler_lists(api):
    url, client, _ = api
    names = [u["name"] for u in client.get(f"{url}/upscalers").json()]
    assert names == ["None", "Lanczos", "Nearest", "4x-tiny", "tiny-x2"]
    modes = [m["name"] for m in client.get(f"{url}/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (bicubic antialiased)" in modes


def test_api_extra_single_and_batch(api):
    url, client, data = api
    body = {"image": b64png(noise_image(16, 8)), "upscaler_1": "4x-tiny", "upscaling_resize": 4}
    response = client.post(f"{url}/extra-single-image", json=body)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["image"])))
    assert image.size == (64, 32)
    assert "Postprocess upscaler: 4x-tiny" in response.json()["html_info"]
    batch = {
        "imageList": [
            {"data": b64png(noise_image(8, 8)), "name": "a.png"},
            {"data": b64png(noise_image(6, 4)), "name": "b.png"},
        ],
        "upscaler_1": "Lanczos",
        "upscaling_resize": 2,
    }
    response = client.post(f"{url}/extra-batch-images", json=batch)
    assert response.status_code == 200, response.text
    sizes = [Image.open(io.BytesIO(base64.b64decode(b))).size for b in response.json()["images"]]
    assert sizes == [(16, 16), (12, 8)]
    assert not (data / "outputs").exists()  # the API saves nothing, as A1111


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"image": base64.b64encode(b"hello").decode(), "upscaler_1": "Lanczos"}, "image"),
        ({"image": "%%%", "upscaler_1": "Lanczos"}, "image"),
        ({"image": "", "upscaler_1": "Lanczos"}, "image"),
        ({"upscaler_1": "nope"}, "upscaler_1"),
        ({"upscaler_1": "Latent"}, "upscaler_1"),
        ({"upscaler_1": "None"}, "upscaler_1"),
        ({"upscaler_1": "Lanczos", "upscaling_resize": 100}, "upscaling_resize"),
    ],
)
def test_api_extras_bad_input_is_422(api, body, loc):
    url, client, data = api
    body = {"image": b64png(noise_image(8, 8)), **body}
    response = client.post(f"{url}/extra-single-image", json=body)
    assert response.status_code == 422, response.text
    assert loc in [str(part) for item in response.json()["detail"] for part in item["loc"]]
    assert client.get(f"{url}/upscalers").status_code == 200  # still up


def test_api_extras_over_the_pixel_limit_is_422(api):
    url, client, _ = api
    huge = Image.new("RGB", (4097, 4097))  # compresses to a few kB; refused from its header
    response = client.post(
        f"{url}/extra-single-image", json={"image": b64png(huge), "upscaler_1": "Lanczos"}
    )
    assert response.status_code == 422
    assert "over the limit" in response.json()["detail"][0]["msg"]


def test_api_face_restoration_without_its_file_is_422(api):
    url, client, data = api
    body = {"image": b64png(noise_image(8, 8)), "upscaler_1": "Lanczos", "gfpgan_visibility": 0.5}
    response = client.post(f"{url}/extra-single-image", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] == "gfpgan_visibility"
    assert "GFPGANv1.4.pth" in detail["msg"] and str(data / "models" / "GFPGAN") in detail["msg"]
