"""Variation seeds, resize seed from, the noise multiplier and extra noise in real jobs.

A tiny SD 1.x checkpoint runs through the job queue and worker. The checks need no copy
of our noise code: at variation strength 1 the slerp is exactly the variation seed's
noise, so the image is the one of that seed alone; "resize seed from" the image's own size
changes nothing; a noise multiplier of 0 makes the seed irrelevant (Euler adds no noise of
its own); extra noise and Euler a are compared with a bare diffusers pipeline.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from webui.context import build_context
from webui.core.params import Txt2ImgParams
from webui.core.params_img2img import HiresParams, Img2ImgParams
from webui.core.samplers import resolve
from webui.core.schedulers import make_scheduler
from webui.imaging.infotext import parse_infotext
from webui.model_manager.tiny import build_tiny_pipeline
from webui.settings import parse_flags

PROMPT = "a lighthouse on a cliff"
COMMON = dict(prompt=PROMPT, steps=3, width=64, height=64, sampler_name="Euler",
              cfg_scale=6.0, save_images=False)  # fmt: skip


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_files):
    root = tmp_path_factory.mktemp("noise-jobs")
    folder = root / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], folder / "tiny-sd1.safetensors")
    context = build_context(parse_flags(["--data-dir", str(root), "--no-download-sd-model"]))
    yield context
    context.close()


def run(ctx, kind: str, params, options: dict | None = None):
    job = ctx.jobs.submit(kind, params.validated(), owner="noise", options=options or {})
    assert job.done.wait(300), "the job did not finish"
    assert job.state == "done", job.error
    return [g for g in job.result.images if not g.grid]  # a batch's grid comes first


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def init_image() -> Image.Image:
    rng = np.random.RandomState(3)
    return Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")


def test_strength_one_gives_the_variation_seeds_images(ctx):
    varied = run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=41, subseed=77,
                                               subseed_strength=1.0, batch_size=2))  # fmt: skip
    plain = run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=77, batch_size=2))
    for mine, theirs in zip(varied, plain, strict=True):
        assert np.array_equal(pixels(mine.image), pixels(theirs.image))
    fields = [parse_infotext(g.infotext) for g in varied]
    assert [f["Seed"] for f in fields] == [41, 41]
    assert [f["Variation seed"] for f in fields] == [77, 78]
    assert fields[0]["Variation seed strength"] == 1


def test_partial_strength_lies_between(ctx):
    base = pixels(run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=41))[0].image)
    other = pixels(run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=77))[0].image)
    half = pixels(run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=41, subseed=77,
                                                     subseed_strength=0.5))[0].image)  # fmt: skip
    assert not np.array_equal(half, base) and not np.array_equal(half, other)


def test_hires_pass_uses_the_variation_noise_too(ctx):
    hires = HiresParams(scale=1.5, steps=2, denoising_strength=0.5)
    varied = run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=5, subseed=6, subseed_strength=1.0,
                                               hires=hires))  # fmt: skip
    plain = run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=6, hires=hires))
    assert np.array_equal(pixels(varied[0].image), pixels(plain[0].image))


def test_resize_seed_from_own_size_changes_nothing_and_is_written(ctx):
    resized = run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=8, seed_resize_from_w=64,
                                                seed_resize_from_h=64))  # fmt: skip
    plain = run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=8))
    assert np.array_equal(pixels(resized[0].image), pixels(plain[0].image))
    assert "Seed resize from: 64x64" in resized[0].infotext
    other = run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=8, seed_resize_from_w=32,
                                              seed_resize_from_h=48))  # fmt: skip
    assert not np.array_equal(pixels(other[0].image), pixels(plain[0].image))


def test_euler_a_step_noise_follows_the_seed_as_in_diffusers(ctx):
    """Our noise is given as latents: the generators must go on from after it."""
    got = run(ctx, "txt2img", Txt2ImgParams(**{**COMMON, "sampler_name": "Euler a"}, seed=3,
                                            batch_size=2))  # fmt: skip
    pipe = build_tiny_pipeline("sd1", seed=0)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(resolve("Euler a", None), pipe.scheduler.config, steps=3)
    generators = [torch.Generator("cpu").manual_seed(s) for s in (3, 4)]
    expected = pipe(
        PROMPT,
        negative_prompt="",
        num_inference_steps=3,
        guidance_scale=6.0,
        width=64,
        height=64,
        num_images_per_prompt=2,
        generator=generators,
    ).images
    for mine, theirs in zip(got, expected, strict=True):
        assert np.array_equal(pixels(mine.image), pixels(theirs))


def test_noise_multiplier_zero_makes_the_seed_irrelevant(ctx):
    params = dict(**COMMON, init_images=(init_image(),), denoising_strength=0.6,
                  initial_noise_multiplier=0.0)  # fmt: skip
    one = run(ctx, "img2img", Img2ImgParams(**params, seed=1))
    two = run(ctx, "img2img", Img2ImgParams(**params, seed=2))
    assert np.array_equal(pixels(one[0].image), pixels(two[0].image))
    assert parse_infotext(one[0].infotext)["Noise multiplier"] == 0
    normal = run(ctx, "img2img", Img2ImgParams(**{**params, "initial_noise_multiplier": None},
                                               seed=1))  # fmt: skip
    assert "Noise multiplier" not in parse_infotext(normal[0].infotext)


def test_noise_multiplier_option_applies_when_the_job_has_none(ctx):
    params = dict(**COMMON, init_images=(init_image(),), denoising_strength=0.6)
    options = {"initial_noise_multiplier": 0.0}
    one = run(ctx, "img2img", Img2ImgParams(**params, seed=1), options)
    two = run(ctx, "img2img", Img2ImgParams(**params, seed=2), options)
    assert np.array_equal(pixels(one[0].image), pixels(two[0].image))
    assert parse_infotext(one[0].infotext)["Noise multiplier"] == 0


def test_extra_noise_is_added_to_the_first_noising(ctx):
    """A1111: x + noise * (sigma + extra); checked against a bare img2img pipeline."""
    init = init_image()
    got = run(ctx, "img2img", Img2ImgParams(**COMMON, seed=4, init_images=(init,),
                                            denoising_strength=0.6),
              {"img2img_extra_noise": 0.3})  # fmt: skip
    assert parse_infotext(got[0].infotext)["Extra noise"] == 0.3
    import diffusers

    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pipe(build_tiny_pipeline("sd1", seed=0))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(resolve("Euler", None), pipe.scheduler.config, steps=3)
    plain_add_noise = pipe.scheduler.add_noise
    pipe.scheduler.add_noise = lambda x, n, t: plain_add_noise(x, n, t) + 0.3 * n
    array = np.asarray(init, dtype=np.float32) / 127.5 - 1.0
    source = torch.from_numpy(array).permute(2, 0, 1)[None]
    with torch.inference_mode():
        latents = pipe.vae.encode(source).latent_dist.mode() * pipe.vae.config.scaling_factor
    expected = pipe(prompt=PROMPT, negative_prompt="", image=latents, strength=0.6,
                    num_inference_steps=3, guidance_scale=6.0,
                    generator=[torch.Generator("cpu").manual_seed(4)]).images[0]  # fmt: skip
    assert np.array_equal(pixels(got[0].image), pixels(expected))


def test_hires_extra_noise_is_written(ctx):
    hires = HiresParams(scale=1.5, steps=2, denoising_strength=0.5)
    plain = run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=5, hires=hires))
    extra = run(ctx, "txt2img", Txt2ImgParams(**COMMON, seed=5, hires=hires),
                {"img2img_extra_noise": 0.4})  # fmt: skip
    assert parse_infotext(extra[0].infotext)["Extra noise"] == 0.4
    assert not np.array_equal(pixels(extra[0].image), pixels(plain[0].image))


@pytest.mark.parametrize("strength", [0.6, 1.0])  # add_noise, and the pure-noise start
def test_img2img_and_inpaint_take_the_variation_noise(ctx, strength):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    for extra in ({}, {"mask": mask, "mask_blur_x": 0, "mask_blur_y": 0}):
        params = dict(**COMMON, init_images=(init_image(),), denoising_strength=strength, **extra)
        varied = run(ctx, "img2img", Img2ImgParams(**params, seed=1, subseed=2,
                                                   subseed_strength=1.0))  # fmt: skip
        plain = run(ctx, "img2img", Img2ImgParams(**params, seed=2))
        assert np.array_equal(pixels(varied[0].image), pixels(plain[0].image))
        assert parse_infotext(varied[0].infotext)["Variation seed"] == 2
