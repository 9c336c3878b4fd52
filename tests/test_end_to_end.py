"""scan -> identify -> load -> generate -> save -> read back, through the job queue."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pytest
from PIL import Image

from webui.context import build_context
from webui.core.params import Txt2ImgParams
from webui.imaging.infotext import parse_infotext, read_infotext_from_image
from webui.settings import parse_flags


@pytest.fixture
def ctx(data_dir):
    flags = parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"])
    context = build_context(flags)
    yield context
    context.close()


def run(ctx, **overrides):
    base = dict(
        prompt="a red cube", negative_prompt="blurry", steps=2, width=64, height=64, seed=42
    )
    params = Txt2ImgParams(**{**base, **overrides}).validated().with_seed()
    job = ctx.jobs.submit("txt2img", params, owner="test")
    assert job.done.wait(300), "job did not finish"
    assert job.state == "done", job.error
    return job


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_generate_save_and_read_back(ctx, data_dir):
    job = run(ctx, sampler_name="Euler a", cfg_scale=6.5, clip_skip=2)
    (image,) = job.result.images
    today = dt.date.today().isoformat()
    expected = data_dir / "outputs" / "txt2img-images" / today / "00000-42.png"
    assert image.path == str(expected)
    assert expected.exists()
    with Image.open(expected) as im:
        assert im.size == (64, 64)
        fields = parse_infotext(read_infotext_from_image(im))
    assert fields["Prompt"] == "a red cube"
    assert fields["Negative prompt"] == "blurry"
    assert fields["Steps"] == 2
    assert fields["Sampler"] == "Euler a"
    assert fields["CFG scale"] == 6.5
    assert fields["Seed"] == 42
    assert fields["Size-1"] == 64 and fields["Size-2"] == 64
    assert fields["Model"] == "tiny-sd1"
    info = ctx.models.checkpoints()[0]
    assert fields["Model hash"] == info.shorthash and len(info.shorthash) == 10
    assert fields["Clip skip"] == 2


def test_same_seed_same_pixels_other_seed_differs(ctx):
    first = run(ctx).result.images[0]
    second = run(ctx).result.images[0]
    third = run(ctx, seed=43).result.images[0]
    assert first.path != second.path  # the counter moves on, nothing is overwritten
    assert np.array_equal(pixels(first.path), pixels(second.path))
    assert not np.array_equal(pixels(first.path), pixels(third.path))


def test_batch_seeds_count_up(ctx):
    job = run(ctx, seed=100, batch_size=2, batch_count=2)
    grid, *images = job.result.images  # A1111's grid of the four comes first
    assert grid.grid and grid.seed == 100 and grid.image.size == (128, 128)
    assert [g.seed for g in images] == [100, 101, 102, 103]
    # image i of a batch is the single image generated with seed + i (batched matmuls may
    # round differently in the last bit, so allow a step of rounding)
    single = run(ctx, seed=101).result.images[0]
    difference = np.abs(pixels(images[1].path).astype(int) - pixels(single.path))
    assert difference.max() <= 2


def test_random_seed_is_recorded(ctx):
    job = run(ctx, seed=-1)
    seed = job.result.images[0].seed
    assert 0 <= seed <= 4294967294
    assert job.result.params.seed == seed


def test_interrupt_stops_the_job(ctx):
    params = Txt2ImgParams(prompt="x", steps=150, width=64, height=64, seed=1, batch_count=5)
    job = ctx.jobs.submit("txt2img", params.validated(), owner="test")
    while job.progress.step < 1 and not job.finished:
        job.done.wait(0.01)
    ctx.jobs.interrupt(job.id)
    assert job.done.wait(60)
    assert job.state == "interrupted"
    assert len(job.result.images) == 1  # A1111 keeps the partly done image
    assert job.progress.step < 150


def test_checkpoint_cache_keeps_last_n(ctx, data_dir, tiny_files):
    ckpt_dir = data_dir / "models" / "Stable-diffusion"
    (ckpt_dir / "sub").mkdir()
    shutil.copy(tiny_files["sd1"], ckpt_dir / "sub" / "second.safetensors")
    names = [i.name for i in ctx.models.refresh()]
    assert names == ["sub/second", "tiny-sd1"] or sorted(names) == ["second", "tiny-sd1"]
    run(ctx, checkpoint="tiny-sd1")
    run(ctx, checkpoint="second")
    assert [p.name for p in ctx.models.loaded_paths()] == ["second.safetensors"]
    ctx.options.set("sd_checkpoints_limit", 2)
    job = run(ctx, checkpoint="tiny-sd1")
    assert [p.name for p in ctx.models.loaded_paths()] == [
        "second.safetensors",
        "tiny-sd1.safetensors",
    ]
    assert "Model: tiny-sd1" in job.result.images[0].infotext


def test_unknown_checkpoint_fails_clearly(ctx):
    params = Txt2ImgParams(prompt="x", steps=1, width=64, height=64, checkpoint="nope")
    job = ctx.jobs.submit("txt2img", params.validated(), owner="test")
    assert job.done.wait(60)
    assert job.state == "failed"
    assert "nope" in job.error
    run(ctx)  # the queue goes on


@pytest.mark.parametrize("family", ["sd1-inpaint", "sd2", "sdxl"])
def test_every_family_generates_through_the_queue(family, tmp_path, tiny_files):
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    shutil.copy(tiny_files[family], ckpt_dir / f"{family}.safetensors")
    context = build_context(parse_flags(["--data-dir", str(tmp_path), "--no-download-sd-model"]))
    try:
        job = run(context, sampler_name="DPM++ 2M", scheduler="Karras")
        assert job.result.model_family.startswith(
            {"sd2": "SD 2.x", "sdxl": "SDXL"}.get(family, "SD 1.x")
        )
        (image,) = job.result.images
        with Image.open(image.path) as im:
            assert im.size == (64, 64)
            fields = parse_infotext(read_infotext_from_image(im))
        assert fields["Model"] == family
        assert (fields["Sampler"], fields["Schedule type"]) == ("DPM++ 2M", "Karras")
    finally:
        context.close()
