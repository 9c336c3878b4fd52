"""Few-step models and the Speed section (issue 16): 1 step with every sampler on SD-Turbo-
and SDXL-Turbo-shaped models, CFG 1 without the unconditional pass, the TCD sampler and
its gamma, DeepCache (fewer UNet block calls, off is today's image), their infotext.

One server with tiny SD 1.x, SD 2.x (SD-Turbo's architecture) and SDXL checkpoints serves
the module; 64x64 images, 1-4 steps.
"""

from __future__ import annotations

import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerThread
from webui.app import create_app
from webui.core.params import Txt2ImgParams
from webui.core.params_img2img import Img2ImgParams
from webui.core.samplers import SAMPLERS
from webui.imaging.infotext import parse_infotext
from webui.settings import parse_flags

BASE = dict(prompt="a lighthouse", negative_prompt="fog", steps=4, width=64, height=64,
            seed=3, sampler_name="Euler", checkpoint="tiny-sd1", save_images=False)  # fmt: skip
INIT = Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    root = tmp_path_factory.mktemp("speed")
    ckpt = root / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    for family in ("sd1", "sd2", "sdxl"):
        shutil.copy(tiny_files[family], ckpt / f"tiny-{family}.safetensors")
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(root), "--no-download-sd-model"])
    app = create_app(flags)
    with ServerThread(app) as srv:
        yield srv, app.state.ctx


@pytest.fixture(scope="module")
def ctx(server):
    return server[1]


def run(ctx, kind="txt2img", options=None, **changes):
    cls = Txt2ImgParams if kind == "txt2img" else Img2ImgParams
    extra = {"init_images": (INIT,), "denoising_strength": 0.5} if kind == "img2img" else {}
    params = cls(**{**BASE, **extra, **changes}).validated().with_seed()
    job = ctx.jobs.submit(kind, params, owner="test", options=options or {})
    assert job.done.wait(300), "job did not finish"
    assert job.state == "done", job.error
    return job.result


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def fields(result) -> dict:
    return parse_infotext(result.images[0].infotext)


def unet_of(ctx, checkpoint="tiny-sd1"):
    return ctx.models.acquire(ctx.models.resolve(checkpoint)).pipe.unet


def counted(module, ctx, **job):
    """The job's result and the batch rows of every call of `module`."""
    rows: list[int] = []
    handle = module.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        result = run(ctx, **job)
    finally:
        handle.remove()
    return result, rows


# --- one step ---------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", ["tiny-sd2", "tiny-sdxl"])  # SD-Turbo, SDXL-Turbo
def test_every_sampler_makes_an_image_in_one_step(ctx, checkpoint):
    for sampler in SAMPLERS:
        job = dict(checkpoint=checkpoint, sampler_name=sampler, steps=1, cfg_scale=1.0)
        made = run(ctx, **job)
        assert fields(made)["Steps"] == 1 and fields(made)["Sampler"] == sampler
        assert pixels(made).std() > 1.0, sampler
        changed = run(ctx, "img2img", **job)
        assert np.abs(pixels(changed) - np.asarray(INIT, dtype=np.int16)).mean() > 1.0, sampler


def test_img2img_below_one_step_of_strength_still_runs_one(ctx):
    """1 step at strength 0.5 (diffusers: 0 steps) runs one step at that strength's noise."""
    unet = unet_of(ctx)
    weak, rows = counted(unet, ctx, kind="img2img", steps=1, denoising_strength=0.5)
    assert len(rows) == 1
    strong = run(ctx, "img2img", steps=1, denoising_strength=1.0)
    init = np.asarray(INIT, dtype=np.int16)
    assert np.abs(pixels(weak) - init).mean() > 1.0  # before: the init image, untouched
    assert not np.array_equal(pixels(weak), pixels(strong))  # from another noise level
    assert fields(weak)["Steps"] == 1 and fields(weak)["Denoising strength"] == 0.5


# --- CFG scale 1 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "rows"),
    [("a lighthouse", 1), ("[a cat:a dog:2]", 1), ("a lighthouse AND [a cat:a dog:2] :0.5", 2)],
)
def test_cfg_1_runs_no_unconditional_pass(ctx, prompt, rows):
    unet = unet_of(ctx)
    first, calls = counted(unet, ctx, prompt=prompt, cfg_scale=1.0)
    assert calls == [rows] * 4  # one row per image and sub-prompt, none for the negative
    other = run(ctx, prompt=prompt, cfg_scale=1.0, negative_prompt="a storm at sea")
    assert np.array_equal(pixels(first), pixels(other))  # the negative prompt is not used
    _, guided = counted(unet, ctx, prompt=prompt, cfg_scale=2.0)
    assert guided == [rows + 1] * 4


# --- TCD ---------------------------------------------------------------------------------------


def test_tcd_sampler_and_its_gamma(server):
    srv, ctx = server
    names = [s["name"] for s in httpx.get(f"{srv.url}/sdapi/v1/samplers", timeout=60).json()]
    assert names[-1] == "TCD" and "TCD" in SAMPLERS
    default = run(ctx, sampler_name="TCD", cfg_scale=1.0)
    assert "TCD gamma" not in fields(default)  # 0.3, the default, as A1111 leaves defaults out
    same = run(ctx, sampler_name="TCD", cfg_scale=1.0, eta=0.3)
    assert np.array_equal(pixels(default), pixels(same))
    deterministic = run(ctx, sampler_name="TCD", cfg_scale=1.0, eta=0.0)
    assert not np.array_equal(pixels(default), pixels(deterministic))
    assert fields(deterministic)["TCD gamma"] == 0
    by_option = run(ctx, sampler_name="TCD", cfg_scale=1.0, options={"eta_tcd": 0.0})
    assert np.array_equal(pixels(by_option), pixels(deterministic))
    body = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 3,
            "infotext": "a lighthouse\nSteps: 2, Sampler: TCD, CFG scale: 1, TCD gamma: 0.7"}  # fmt: skip
    response = httpx.post(f"{srv.url}/sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text
    assert "TCD gamma: 0.7" in response.json()["info"]


# --- DeepCache ----------------------------------------------------------------------------------


def test_deepcache_runs_fewer_block_calls_and_changes_the_image_slightly(ctx):
    unet = unet_of(ctx)
    deep = unet.mid_block.resnets[0]  # inside the deep blocks: not called when cached
    plain, plain_calls = counted(deep, ctx)
    cached, cached_calls = counted(deep, ctx, options={"deepcache_interval": 3})
    assert (len(plain_calls), len(cached_calls)) == (4, 2)  # steps 1 and 4 are full
    difference = np.abs(pixels(cached) - pixels(plain)).mean()
    assert 0 < difference < np.abs(pixels(plain) - pixels(plain).mean()).mean()
    assert fields(cached)["DeepCache"] == 3 and "DeepCache" not in fields(plain)
    off = run(ctx, options={"deepcache_interval": 0})
    assert np.array_equal(pixels(off), pixels(plain))  # off: today's image
    after = run(ctx)
    assert np.array_equal(pixels(after), pixels(plain))  # no hook is left on the UNet
    branch = run(ctx, options={"deepcache_interval": 3, "deepcache_branch": 1})
    assert fields(branch)["DeepCache branch"] == 1


def test_deepcache_with_ngms_and_and_prompts(ctx):
    """NGMS changes the rows of every other call: each batch shape has its own cache."""
    result = run(ctx, prompt="a lighthouse AND a cat", s_min_uncond=100.0, steps=4,
                 options={"deepcache_interval": 2, "token_merging_ratio": 0.5})  # fmt: skip
    assert np.isfinite(pixels(result)).all() and pixels(result).std() > 1.0
    info = fields(result)
    assert (info["DeepCache"], info["Token merging ratio"], info["NGMS"]) == (2, 0.5, 100)


def test_speed_settings_through_the_api_and_infotext(server):
    srv, _ = server
    body = {"prompt": "a lighthouse", "steps": 3, "width": 64, "height": 64, "seed": 3,
            "override_settings": {"deepcache_interval": 2}}  # fmt: skip
    response = httpx.post(f"{srv.url}/sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text
    info = response.json()["info"]
    assert "DeepCache: 2" in info
    again = {"prompt": "a lighthouse", "infotext": json_infotext(info)}
    replay = httpx.post(f"{srv.url}/sdapi/v1/txt2img", json=again, timeout=300)
    assert replay.status_code == 200, replay.text
    assert replay.json()["images"][0] == response.json()["images"][0]  # PNG Info round trip
    bad = {**body, "override_settings": {"deepcache_interval": 99}}
    refused = httpx.post(f"{srv.url}/sdapi/v1/txt2img", json=bad, timeout=60)
    assert refused.status_code == 422 and "deepcache_interval" in refused.text


def json_infotext(info: str) -> str:
    import json

    return json.loads(info)["infotexts"][0]
