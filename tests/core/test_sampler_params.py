"""eta, sigma churn / tmin / tmax / noise and NGMS: honoured where the sampler has them,
refused by name where A1111 would use a value diffusers cannot, written to the infotext,
read back by the API."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from tests.conftest import ServerThread, with_tiny_sd1
from webui.app import create_app
from webui.core.composable import hooked, sigma_of_timestep
from webui.core.conditioning import prepare_conditioning
from webui.core.families.sd import SD1, SD_SCHEDULER
from webui.core.families.sdxl import SDXL
from webui.core.params import ParamError, Txt2ImgParams
from webui.core.params_img2img import HiresParams, Img2ImgParams
from webui.core.sampler_params import Ngms, SamplerDefaults, sampler_run
from webui.core.samplers import resolve
from webui.core.schedulers import ancestral_step, make_scheduler
from webui.imaging.infotext import parse_infotext
from webui.model_manager.tiny import build_tiny_pipeline
from webui.settings import parse_flags

# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "changes", "field"),
    [
        ("DPM2 a", {"eta": 0.5}, "eta"),  # diffusers' DPM2 a has no eta
        ("DPM++ 2M SDE", {"eta": 0.0}, "eta"),
        ("DPM2 a", {"s_noise": 0.5}, "s_noise"),
        ("Heun", {"s_churn": 1.0}, "s_churn"),
        ("DPM2", {"s_churn": 0.5}, "s_churn"),
        ("Euler", {"eta": 1.5}, "eta"),  # out of bounds for any sampler
        ("Euler", {"s_churn": -1.0}, "s_churn"),
        ("Euler", {"s_noise": float("nan")}, "s_noise"),
        ("Euler", {"s_tmax": "big"}, "s_tmax"),
        ("Euler", {"s_min_uncond": -0.5}, "s_min_uncond"),
    ],
)
def test_values_a_sampler_cannot_honour_are_refused_by_name(sampler, changes, field):
    with pytest.raises(ParamError) as info:
        Txt2ImgParams(sampler_name=sampler, **changes).validated()
    assert info.value.field == field


def test_the_hires_sampler_is_checked_too():
    hires = HiresParams(scale=1.5, sampler_name="Heun")
    with pytest.raises(ParamError) as info:
        Txt2ImgParams(sampler_name="Euler", s_churn=1.0, hires=hires).validated()
    assert info.value.field == "s_churn"


@pytest.mark.parametrize(
    ("sampler", "changes"),
    [
        ("DPM2 a", {"eta": 1.0}),  # what diffusers does anyway
        ("Euler a", {"eta": 0.3}),
        ("DDIM", {"eta": 0.3}),
        ("Euler", {"s_churn": 2.0, "s_tmin": 0.1, "s_tmax": 5.0, "s_noise": 1.003}),
        ("DPM++ SDE", {"s_noise": 0.8}),
        ("Heun", {"s_noise": 0.8, "s_tmax": 0.0}),  # no churn: no effect in A1111 either
        ("DPM++ 2M", {"eta": 0.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0}),
    ],
)
def test_values_with_an_effect_here_or_none_in_a1111_pass(sampler, changes):
    Txt2ImgParams(sampler_name=sampler, **changes).validated()


def test_values_that_do_not_apply_are_reported_not_silent():
    params = Txt2ImgParams(eta=0.0, s_churn=0.5)
    run = sampler_run("DPM++ 2M", params, SamplerDefaults())
    assert not run.step_kwargs and not run.fields
    assert [w.split(" does")[0] for w in run.warnings] == ["eta 0", "sigma churn 0.5"]
    settings = SamplerDefaults(eta_ancestral=0.5)  # A1111 would use it; diffusers cannot
    assert "(from Settings)" in sampler_run("DPM++ SDE", Txt2ImgParams(), settings).warnings[0]
    assert sampler_run("DPM++ SDE", Txt2ImgParams(), SamplerDefaults()).warnings == ()
    assert sampler_run("Euler a", Txt2ImgParams(), settings).step_kwargs == {"eta": 0.5}


def test_options_fill_what_the_request_leaves_out():
    settings = SamplerDefaults(eta_ddim=0.25, s_churn=1.5, s_tmax=0.0)
    ddim = sampler_run("DDIM", Txt2ImgParams(), settings)
    assert ddim.pipeline_kwargs == {"eta": 0.25} and ddim.fields == {"Eta DDIM": 0.25}
    euler = sampler_run("Euler", Txt2ImgParams(s_churn=0.5), settings)
    assert euler.step_kwargs == {"s_churn": 0.5, "s_tmin": 0.0, "s_tmax": float("inf"),
                                 "s_noise": 1.0}  # fmt: skip
    assert euler.fields == {"Sigma churn": 0.5}


# --- jobs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_files):
    data = with_tiny_sd1(tmp_path_factory.mktemp("sampler-params"), tiny_files)
    flags = parse_flags(["--api", "--nowebui", "--data-dir", str(data), "--no-download-sd-model"])
    app = create_app(flags)
    with ServerThread(app) as srv:
        yield srv, app.state.ctx


BASE = dict(prompt="a lighthouse", negative_prompt="fog", steps=4, width=64, height=64,
            seed=21, checkpoint="tiny-sd1", save_images=False)  # fmt: skip


def run(ctx, kind="txt2img", options=None, **changes):
    cls = Txt2ImgParams if kind == "txt2img" else Img2ImgParams
    params = cls(**{**BASE, **changes}).validated()
    job = ctx.jobs.submit(kind, params, owner="test", options=options or {})
    assert job.done.wait(300) and job.state == "done", job.error
    return job.result


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


def _fields(result) -> dict:
    return parse_infotext(result.images[0].infotext)


@pytest.mark.parametrize(
    ("sampler", "changes", "field", "value"),
    [
        ("DDIM", {"eta": 0.8}, "Eta DDIM", 0.8),
        ("Euler a", {"eta": 0.5}, "Eta", 0.5),
        ("Euler", {"s_churn": 5.0}, "Sigma churn", 5),
        ("DPM++ SDE", {"s_noise": 0.5}, "Sigma noise", 0.5),
    ],
)
def test_honoured_values_change_the_image_and_are_written(server, sampler, changes, field, value):
    _, ctx = server
    plain = run(ctx, sampler_name=sampler)
    changed = run(ctx, sampler_name=sampler, **changes)
    assert not np.array_equal(_pixels(plain), _pixels(changed))
    assert _fields(changed)[field] == value
    assert field not in _fields(plain)


def test_euler_churn_window_and_noise(server):
    """tmin/tmax limit where churn adds noise; s_noise scales it: each changes the image."""
    _, ctx = server
    churn = run(ctx, sampler_name="Euler", s_churn=5.0)
    window = run(ctx, sampler_name="Euler", s_churn=5.0, s_tmin=0.5, s_tmax=3.0)
    noise = run(ctx, sampler_name="Euler", s_churn=5.0, s_noise=0.5)
    assert not np.array_equal(_pixels(churn), _pixels(window))
    assert not np.array_equal(_pixels(churn), _pixels(noise))
    fields = _fields(window)
    assert (fields["Sigma tmin"], fields["Sigma tmax"]) == (0.5, 3)
    assert _fields(noise)["Sigma noise"] == 0.5


def test_options_apply_when_the_request_leaves_them_out(server):
    _, ctx = server
    by_option = run(ctx, options={"eta_ddim": 0.8}, sampler_name="DDIM")
    by_request = run(ctx, sampler_name="DDIM", eta=0.8)
    assert np.array_equal(_pixels(by_option), _pixels(by_request))
    assert _fields(by_option)["Eta DDIM"] == 0.8


def test_a_value_that_does_not_apply_is_a_warning_of_the_result(server):
    _, ctx = server
    result = run(ctx, sampler_name="DPM++ 2M", eta=0.3)
    assert any("eta 0.3 does not apply to sampler DPM++ 2M" in w for w in result.warnings)


def _count_unet_rows(ctx, **changes):
    """Rows of every UNet call of one job (2 per image with the uncond pass, 1 without)."""
    unet = ctx.models.acquire(ctx.models.resolve("tiny-sd1")).pipe.unet
    rows: list[int] = []
    # a forward hook sees the rows the UNet ran on, after the conditioning hooks' changes
    handle = unet.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    try:
        result = run(ctx, **changes)
    finally:
        handle.remove()
    return rows, result


def test_ngms_skips_the_unconditional_pass_below_its_sigma(server):
    _, ctx = server
    rows, plain = _count_unet_rows(ctx, sampler_name="Euler")
    assert rows == [2, 2, 2, 2]
    rows, skipped = _count_unet_rows(ctx, sampler_name="Euler", s_min_uncond=100.0)
    assert rows == [2, 1, 2, 1]  # every other call, as A1111
    assert _fields(skipped)["NGMS"] == 100
    assert not np.array_equal(_pixels(plain), _pixels(skipped))
    rows, _ = _count_unet_rows(ctx, sampler_name="Euler", s_min_uncond=100.0,
                               options={"s_min_uncond_all": True})  # fmt: skip
    assert rows == [1, 1, 1, 1]
    rows, low = _count_unet_rows(ctx, sampler_name="Euler", s_min_uncond=0.001)
    assert rows == [2, 2, 2, 2]  # no step is below that sigma
    assert _fields(low)["NGMS"] == 0.001


def test_ngms_with_and_and_prompt_editing(server):
    _, ctx = server
    prompt = "a lighthouse AND [a cat:a dog:2] :0.5"
    rows, result = _count_unet_rows(ctx, sampler_name="Euler", prompt=prompt, s_min_uncond=100.0)
    assert rows == [3, 2, 3, 2]  # uncond + 2 sub-prompts; skipped: the 2 sub-prompts
    assert np.isfinite(_pixels(result)).all()


def test_img2img_takes_them_too(server):
    _, ctx = server
    from PIL import Image

    init = Image.new("RGB", (64, 64), (40, 120, 200))
    plain = run(ctx, "img2img", sampler_name="DDIM", init_images=(init,))
    eta = run(ctx, "img2img", sampler_name="DDIM", init_images=(init,), eta=0.9,
              s_min_uncond=100.0)  # fmt: skip
    assert not np.array_equal(_pixels(plain), _pixels(eta))
    assert _fields(eta)["Eta DDIM"] == 0.9 and _fields(eta)["NGMS"] == 100


# --- the API ------------------------------------------------------------------------------------


def _post(srv, path="txt2img", **changes):
    body = {"prompt": "a lighthouse", "steps": 3, "width": 64, "height": 64, "seed": 3,
            "sampler_name": "Euler", **changes}  # fmt: skip
    return httpx.post(f"{srv.url}/sdapi/v1/{path}", json=body, timeout=300)


def test_api_fields_are_honoured_and_read_back(server):
    srv, _ = server
    response = _post(srv, s_churn=2.5, s_tmin=0.2, s_tmax=8.0, s_noise=0.9, s_min_uncond=3.0)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    extra = info["extra_generation_params"]
    assert (extra["Sigma churn"], extra["Sigma tmin"], extra["Sigma tmax"]) == (2.5, 0.2, 8)
    assert (extra["Sigma noise"], extra["NGMS"]) == (0.9, 3)
    png = httpx.post(f"{srv.url}/sdapi/v1/png-info", timeout=60,
                     json={"image": response.json()["images"][0]}).json()  # fmt: skip
    assert png["parameters"]["Sigma churn"] == 2.5
    # the `infotext` request field brings them back: the same image
    again = _post(srv, infotext=png["info"])
    assert again.status_code == 200, again.text
    assert again.json()["images"][0] == response.json()["images"][0]
    ddim = _post(srv, sampler_name="DDIM", eta=0.4)
    assert "Eta DDIM: 0.4" in json.loads(ddim.json()["info"])["infotexts"][0]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sampler_name": "DPM++ SDE", "eta": 0.5}, "eta"),
        ({"sampler_name": "Heun", "s_churn": 1.0}, "s_churn"),
        ({"sampler_name": "DPM2 a", "s_noise": 0.7}, "s_noise"),
        ({"s_min_uncond": -1}, "s_min_uncond"),
        ({"sampler_name": "Euler", "eta": 3}, "eta"),
    ],
)
def test_api_refuses_what_the_sampler_cannot_do(server, changes, field):
    srv, _ = server
    for path in ("txt2img", "img2img"):
        extra = {"init_images": [_tiny_png()]} if path == "img2img" else {}
        response = _post(srv, path, **changes, **extra)
        assert response.status_code == 422, response.text
        assert field in json.dumps(response.json()["detail"]), response.text


def _tiny_png() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# --- Euler a's eta ------------------------------------------------------------------------------


def _euler_a_run(step, eta_seed: int, steps: int = 6):
    scheduler = make_scheduler(resolve("Euler a", None), SD_SCHEDULER, steps=steps)
    scheduler.set_timesteps(steps)
    x = (
        torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        * scheduler.init_noise_sigma
    )
    generator = torch.Generator().manual_seed(eta_seed)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        eps = 0.3 * model_input + 0.1  # a stand-in denoiser: smooth, deterministic
        x = step(scheduler, eps, t, x, generator)
    return x


def test_ancestral_step_with_eta_1_is_diffusers_step_and_eta_0_adds_no_noise():
    def diffusers_step(s, eps, t, x, g):
        return s.step(eps, t, x, generator=g).prev_sample

    def ours(eta):
        return lambda s, eps, t, x, g: (
            ancestral_step(s, eps, t, x, g, ancestral_eta=eta).prev_sample
        )

    reference = _euler_a_run(diffusers_step, 1)
    assert torch.allclose(_euler_a_run(ours(1.0), 1), reference, atol=1e-5)
    no_noise = [_euler_a_run(ours(0.0), seed) for seed in (1, 2)]
    assert torch.equal(no_noise[0], no_noise[1])  # deterministic: the noise is not used
    half = [_euler_a_run(ours(0.5), seed) for seed in (1, 2)]
    assert not torch.equal(half[0], half[1]) and not torch.allclose(half[0], reference)


# --- NGMS at the UNet hooks, SD 1.x and SDXL ------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_ngms_on_every_step_is_the_conditional_prediction_alone(family):
    """Skipping the negative pass everywhere gives exactly what no guidance gives."""
    pipe = build_tiny_pipeline(family)
    pipe.set_progress_bar_config(disable=True)
    fam = SD1 if family == "sd1" else SDXL
    cond = prepare_conditioning(pipe, fam, "a bird", "ugly", 1, steps=3)

    def sample(cfg: float, ngms: Ngms):
        rows: list[int] = []
        sigma_of = sigma_of_timestep(pipe.scheduler.alphas_cumprod)
        with hooked(pipe.unet, cond, 1, ngms, sigma_of) as follow:
            handle = pipe.unet.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
            try:
                image = pipe(**cond.pipeline_kwargs(), num_inference_steps=3, width=64,
                             height=64, guidance_scale=cfg, output_type="np",
                             generator=torch.Generator().manual_seed(2),
                             callback_on_step_end=follow(None)).images  # fmt: skip
            finally:
                handle.remove()
        return rows, image

    rows, skipped = sample(7.0, Ngms(100.0, all_steps=True))
    assert rows == [1, 1, 1]
    _, unguided = sample(1.0, Ngms())
    assert np.array_equal(skipped, unguided)
    rows, guided = sample(7.0, Ngms(100.0))
    assert rows == [2, 1, 2] and not np.array_equal(guided, unguided)
