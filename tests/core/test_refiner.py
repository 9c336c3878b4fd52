"""The Refiner and hires. fix with another checkpoint: sampling, infotext, API, PNG Info.

One server holds tiny SDXL, SDXL refiner and two SD 1.x checkpoints (RAM cache of 4, so
each loads once)."""

from __future__ import annotations

import base64
import io
import json
import shutil

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import ServerThread
from tests.tiny_networks import write_kohya_lora
from webui.app import create_app
from webui.core.families import default_families
from webui.core.params import ParamError, Txt2ImgParams
from webui.core.params_img2img import HiresParams
from webui.core.refiner import switch_step
from webui.imaging.infotext import parse_infotext
from webui.model_manager.loader import identify_file, load_checkpoint
from webui.model_manager.tiny import build_tiny_pipeline, save_tiny_checkpoint
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def refiner_file(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("refiner") / "r.safetensors",
                                "sdxl-refiner")  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files, refiner_file):
    data = tmp_path_factory.mktemp("refiner-server")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    shutil.copy(tiny_files["sdxl"], ckpt / "tiny-sdxl.safetensors")
    shutil.copy(tiny_files["sd1"], ckpt / "tiny-sd1.safetensors")
    shutil.copy(refiner_file, ckpt / "tiny-refiner.safetensors")
    save_tiny_checkpoint(ckpt / "tiny-sd1-b.safetensors", "sd1", seed=1)
    (data / "models" / "Lora").mkdir(parents=True)
    write_kohya_lora(data / "models" / "Lora" / "ink.safetensors", build_tiny_pipeline("sd1"))
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    app = create_app(flags)
    app.state.ctx.options.set("sd_checkpoints_limit", 4)
    with ServerThread(app) as srv:
        yield srv, app.state.ctx


def run(ctx, **changes):
    base = dict(prompt="a castle", negative_prompt="fog", steps=4, width=64, height=64, seed=5,
                checkpoint="tiny-sdxl", sampler_name="Euler", save_images=False)  # fmt: skip
    params = Txt2ImgParams(**{**base, **changes}).validated()
    job = ctx.jobs.submit("txt2img", params, owner="test")
    assert job.done.wait(300)
    return job


def image_of(ctx, **changes):
    job = run(ctx, **changes)
    assert job.state == "done", job.error
    (image,) = [g for g in job.result.images if not g.grid]
    return np.asarray(image.image, dtype=np.int16), image.infotext


def test_the_refiner_file_loads(refiner_file):
    families = default_families()
    spec = identify_file(refiner_file, families)
    assert (spec.family, spec.pipeline_class) == (
        "sdxl_refiner",
        "StableDiffusionXLImg2ImgPipeline",
    )
    assert spec.unet["projection_class_embeddings_input_dim"] == 5 * 8 + 32  # aesthetic score
    loaded = load_checkpoint(refiner_file, "cpu", torch.float32, families)
    assert loaded.pipe.text_encoder is None and loaded.pipe.config.requires_aesthetics_score
    original = build_tiny_pipeline("sdxl-refiner")
    for name in ("unet", "vae", "text_encoder_2"):
        mine, theirs = getattr(loaded.pipe, name).state_dict(), getattr(original, name).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name


def test_switch_step_as_a1111():
    assert [switch_step(20, at) for at in (0.8, 0.5, 1.0, 0.01, 0.33)] == [16, 10, 20, 1, 7]


def test_switch_at_one_is_no_refiner_and_a_half_refines_the_second_half(server):
    _, ctx = server
    plain, _ = image_of(ctx)
    at_one, _ = image_of(ctx, refiner_checkpoint="tiny-refiner", refiner_switch_at=1.0)
    refined, infotext = image_of(ctx, refiner_checkpoint="tiny-refiner", refiner_switch_at=0.5)
    assert np.array_equal(plain, at_one)
    assert np.abs(plain - refined).max() > 2
    fields = parse_infotext(infotext)
    assert fields["Refiner"].startswith("tiny-refiner [") and fields["Refiner switch at"] == 0.5


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a"])
def test_the_refiner_continues_the_same_sampler_run(server, sampler):
    """Refining with the main model itself changes nothing: the multistep history, the
    step index and the ancestral noise go on across the switch."""
    _, ctx = server
    plain, _ = image_of(ctx, sampler_name=sampler)
    same, _ = image_of(ctx, sampler_name=sampler, refiner_checkpoint="tiny-sdxl",
                       refiner_switch_at=0.5)  # fmt: skip
    assert np.array_equal(plain, same)


def test_refusals_with_a_reason(server):
    _, ctx = server
    job = run(ctx, checkpoint="tiny-refiner")
    assert job.state == "failed" and "refiner" in str(job.error).lower()
    job = run(ctx, refiner_checkpoint="tiny-sd1", refiner_switch_at=0.5)
    assert job.state == "failed" and "latent spaces" in str(job.error)
    with pytest.raises(ParamError) as info:
        Txt2ImgParams(refiner_switch_at=1.5).validated()
    assert info.value.field == "refiner_switch_at"


def test_hires_with_another_checkpoint(server):
    _, ctx = server
    hires = HiresParams(scale=1.5, denoising_strength=0.6)
    common = dict(checkpoint="tiny-sd1", steps=3)
    same, same_info = image_of(ctx, hires=hires, **common)
    other, infotext = image_of(ctx, hires=HiresParams(scale=1.5, denoising_strength=0.6,
                                                      checkpoint="tiny-sd1-b"), **common)  # fmt: skip
    assert other.shape == same.shape == (96, 96, 3)
    assert np.abs(same - other).max() > 2
    assert "Hires checkpoint" not in parse_infotext(same_info)
    assert parse_infotext(infotext)["Hires checkpoint"].startswith("tiny-sd1-b [")


def test_the_jobs_lora_is_on_the_hires_checkpoint_too(server):
    """A given first pass leaves only the hires. pass, run by another checkpoint: the
    prompt's LoRA changes that pass's picture, so it is on that checkpoint (A1111 applies
    the job's networks to whichever model runs)."""
    _, ctx = server
    given = Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8))
    hires = HiresParams(scale=1.5, denoising_strength=0.6, checkpoint="tiny-sd1-b",
                        firstpass_image=given)  # fmt: skip
    plain, _ = image_of(ctx, prompt="a castle", checkpoint="tiny-sd1", steps=3, hires=hires)
    inked, infotext = image_of(ctx, prompt="a castle <lora:ink:1>", checkpoint="tiny-sd1",
                               steps=3, hires=hires)  # fmt: skip
    assert "ink" in parse_infotext(infotext).get("Lora hashes", "")
    assert np.abs(plain - inked).max() > 2


def _post(srv, **changes):
    body = {"prompt": "a castle", "steps": 4, "width": 64, "height": 64, "seed": 9,
            "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": "tiny-sdxl"},
            **changes}  # fmt: skip
    return httpx.post(f"{srv.url}/sdapi/v1/txt2img", json=body, timeout=300)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"refiner_checkpoint": "nope"}, "refiner_checkpoint"),
        ({"refiner_checkpoint": "tiny-refiner", "refiner_switch_at": 2}, "refiner_switch_at"),
        ({"enable_hr": True, "hr_checkpoint_name": "nope"}, "hr_checkpoint_name"),
    ],
)
def test_api_unknown_checkpoints_are_422(server, changes, field):
    srv, _ = server
    response = _post(srv, **changes)
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["detail"])


def test_api_refiner_and_png_info_round_trip(server):
    srv, _ = server
    response = _post(srv, refiner_checkpoint="tiny-refiner", refiner_switch_at=0.5,
                     save_images=True)  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert info["extra_generation_params"]["Refiner switch at"] == 0.5
    png = body["images"][0]
    parsed = httpx.post(f"{srv.url}/sdapi/v1/png-info", json={"image": png}, timeout=60).json()
    assert parsed["parameters"]["Refiner"].startswith("tiny-refiner [")
    # A1111 1.10's `infotext` field: the refiner and its switch come back from the text
    again = _post(srv, infotext=parsed["info"], save_images=True)
    assert again.status_code == 200, again.text
    assert again.json()["images"][0] == png
    plain = _post(srv, seed=parse_infotext(parsed["info"])["Seed"])
    assert Image.open(io.BytesIO(base64.b64decode(plain.json()["images"][0]))).tobytes() != (
        Image.open(io.BytesIO(base64.b64decode(png))).tobytes()
    )


def test_img2img_refiner_and_the_refiner_s_aesthetic_scores(server):
    from webui.core.params_img2img import Img2ImgParams

    _, ctx = server
    start = Image.new("RGB", (64, 64), (120, 90, 60))

    def img2img(options=None, **changes):
        params = Img2ImgParams(**{**dict(
            prompt="a castle", negative_prompt="fog", steps=8, width=64, height=64, seed=5,
            checkpoint="tiny-sdxl", save_images=False, init_images=(start,),
            denoising_strength=0.5, sampler_name="DPM++ 2M"), **changes}).validated()  # fmt: skip
        job = ctx.jobs.submit("img2img", params, owner="test", options=options)
        assert job.done.wait(300) and job.state == "done", job.error
        image = job.result.images[0]
        return np.asarray(image.image, dtype=np.int16), parse_infotext(image.infotext)

    plain, _ = img2img()
    same, _ = img2img(refiner_checkpoint="tiny-sdxl", refiner_switch_at=0.5)
    assert np.array_equal(plain, same)  # the same run goes on after the switch
    refined, fields = img2img(refiner_checkpoint="tiny-refiner", refiner_switch_at=0.5)
    assert np.abs(plain - refined).max() > 2 and fields["Refiner switch at"] == 0.5
    # the refiner as the main checkpoint of img2img, with the options' aesthetic scores
    default, _ = img2img(checkpoint="tiny-refiner")
    other, _ = img2img({"sdxl_refiner_high_aesthetic_score": 9.5}, checkpoint="tiny-refiner")
    assert np.abs(default - other).max() > 0
    with pytest.raises(ParamError) as info:
        Img2ImgParams(init_images=(start,), mask=Image.new("L", (64, 64), 255),
                      refiner_checkpoint="tiny-refiner").validated()  # fmt: skip
    assert info.value.field == "refiner_checkpoint"


def test_xyz_plot_refiner_axes(server):
    from webui.ext.scripts.xyz_axes import axis_by_label, read_axis

    _, ctx = server
    base = Txt2ImgParams(prompt="a castle", negative_prompt="fog", steps=4, width=64,
                         height=64, seed=5, checkpoint="tiny-sdxl", sampler_name="Euler",
                         save_images=False, refiner_checkpoint="tiny-refiner").validated()  # fmt: skip
    axis = {"x_type": "Refiner switch at", "x_values": "0.5, 1", "include_lone_images": True}
    params = ctx.extensions.prepare(base, script="X/Y/Z plot", script_args=axis)
    job = ctx.jobs.submit("txt2img", params, owner="test")
    assert job.done.wait(300) and job.state == "done", job.error
    cells = job.result.images[1:]  # the X/Y/Z grid first, then the lone images
    assert [parse_infotext(g.infotext)["Refiner switch at"] for g in cells] == [0.5, 1]
    plain, _ = image_of(ctx)
    assert np.array_equal(np.asarray(cells[1].image, dtype=np.int16), plain)
    assert not np.array_equal(np.asarray(cells[0].image, dtype=np.int16), plain)
    unrefined = ctx.extensions.arg_check(Txt2ImgParams().validated())
    with pytest.raises(ValueError, match="needs a refiner"):
        read_axis(axis_by_label("Refiner switch at", Txt2ImgParams), "0.5", unrefined)
