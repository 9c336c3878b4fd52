"""SD 3.5's Skip Layer Guidance (`webui.core.skip_layer_guidance`): our transformer hook
gives what diffusers' own `skip_guidance_layers` gives in txt2img, scale 0 is off, the
fields are checked, the API reads them (and from an infotext), and a job writes them in its
infotext; a block the model lacks is a message; other families refuse it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from webui.api.mapping import txt2img_request
from webui.api.schemas import StableDiffusionTxt2ImgProcessingAPI as Txt2ImgRequest
from webui.context import build_context
from webui.core import skip_layer_guidance as slg
from webui.core.errors import ParamError
from webui.core.families import SD3
from webui.core.params import Txt2ImgParams
from webui.errors import UserError
from webui.imaging.infotext import parse_infotext
from webui.services.errors import RequestError
from webui.services.generation import GenerationRequest
from webui.settings import parse_flags


def _slg(scale: float, layers=(1,), start=0.01, stop=0.6, cfg=4.0) -> SimpleNamespace:
    return SimpleNamespace(cfg_scale=cfg, skip_layer_guidance_scale=scale,
                           skip_guidance_layers=layers, skip_layer_guidance_start=start,
                           skip_layer_guidance_stop=stop)  # fmt: skip


def _picture(pipe, **kwargs) -> np.ndarray:
    return pipe(**kwargs, num_inference_steps=4, height=32, width=32,
                generator=torch.Generator().manual_seed(1), output_type="latent").images.numpy()  # fmt: skip


def _ours(pipe, conditioning, params) -> np.ndarray:
    kwargs = SD3.pipeline_call_kwargs(conditioning, params)
    with SD3.follow_steps(pipe, conditioning, 1) as follow:
        return _picture(pipe, **kwargs, callback_on_step_end=follow(lambda p, i, t, k: {}))


def test_the_hook_gives_diffusers_own_skip_layer_guidance_and_scale_0_is_off(sd3_files):
    pipe = sd3_files["pipe"]
    conditioning = SD3.conditioning(pipe, "a cat", "a dog", 1, steps=4)
    prompts = conditioning.pipeline_kwargs()
    off = _picture(pipe, **prompts, guidance_scale=4.0)
    native = _picture(pipe, **prompts, guidance_scale=4.0, skip_guidance_layers=[1],
                      skip_layer_guidance_scale=3.0, skip_layer_guidance_start=0.01,
                      skip_layer_guidance_stop=0.6)  # fmt: skip
    ours = _ours(pipe, conditioning, _slg(3.0))
    assert abs(native - off).max() > 1e-3  # it changes the image
    assert abs(ours - native).max() < 1e-5
    assert np.array_equal(_ours(pipe, conditioning, _slg(0.0)), off)
    assert np.array_equal(
        _ours(pipe, conditioning, _slg(3.0, cfg=1.0)), _picture(pipe, **prompts, guidance_scale=1.0)
    )  # no CFG: no SLG


def test_a_block_the_model_lacks_is_a_message(sd3_files):
    pipe = sd3_files["pipe"]
    conditioning = SD3.conditioning(pipe, "a cat", "a dog", 1, steps=4)
    with pytest.raises(UserError, match="blocks 0-1; asked to skip 7, 8"):
        _ours(pipe, conditioning, _slg(3.0, layers=(1, 7, 8)))


@pytest.mark.parametrize(("fields", "field"), [
    ({"skip_guidance_layers": ("x",)}, "skip_guidance_layers"),
    ({"skip_layer_guidance_scale": 3.0, "skip_guidance_layers": ()}, "skip_guidance_layers"),
    ({"skip_layer_guidance_scale": -1.0}, "skip_layer_guidance_scale"),
    ({"skip_layer_guidance_start": 0.5, "skip_layer_guidance_stop": 0.2},
     "skip_layer_guidance_stop"),
])  # fmt: skip
def test_bad_fields_are_refused_naming_them(fields, field):
    with pytest.raises(ParamError) as caught:
        Txt2ImgParams(prompt="a cat", **fields).validated()
    assert caught.value.field == field


def test_the_api_reads_the_fields_and_an_infotext():
    body = Txt2ImgRequest(prompt="a cat", skip_layer_guidance_scale=3, skip_guidance_layers="7, 8")
    params = txt2img_request(body, "api", None).params
    assert (params.skip_layer_guidance_scale, params.skip_guidance_layers) == (3, (7, 8))
    info = ('a cat\nSteps: 20, Sampler: Euler, CFG scale: 4, Seed: 1, Size: 64x64, '
            'Skip layer guidance: 2.5, Skip layer guidance layers: "7,9", '
            "Skip layer guidance start: 0.02, Skip layer guidance stop: 0.2")  # fmt: skip
    params = txt2img_request(Txt2ImgRequest(infotext=info), "api", None).params
    assert (params.skip_layer_guidance_scale, params.skip_guidance_layers) == (2.5, (7, 9))
    assert (params.skip_layer_guidance_start, params.skip_layer_guidance_stop) == (0.02, 0.2)
    with pytest.raises(RequestError, match="block numbers"):
        txt2img_request(Txt2ImgRequest(skip_guidance_layers="7, x"), "api", None)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, sd3_files, tiny_files):
    data = tmp_path_factory.mktemp("sd3-slg-data")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(sd3_files["all-in-one"], data / "models" / "Stable-diffusion")
    shutil.copy(tiny_files["sd1"], data / "models" / "Stable-diffusion" / "sd1.safetensors")
    context = build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))
    yield context
    context.close()


def _params(**fields) -> Txt2ImgParams:
    return Txt2ImgParams(prompt="a red cube", steps=4, width=64, height=64, seed=7, cfg_scale=4,
                         sampler_name="Euler", save_images=False,
                         checkpoint="sd3.5-tiny-medium", **fields).validated()  # fmt: skip


def _run(ctx, params):
    job = ctx.jobs.submit("txt2img", params, owner="test")
    assert job.done.wait(300), "job did not finish"
    assert job.state == "done", job.error
    return job.result


def test_a_job_with_skip_layer_guidance_and_its_infotext(ctx):
    before = np.asarray(_run(ctx, _params()).images[0].image)
    on = _run(ctx, _params(skip_layer_guidance_scale=3.0, skip_guidance_layers=(1,),
                           skip_layer_guidance_stop=0.6))  # fmt: skip
    assert not np.array_equal(np.asarray(on.images[0].image), before)
    fields = parse_infotext(on.images[0].infotext)
    assert fields["Skip layer guidance"] == 3.0
    assert slg.parse_layers(fields["Skip layer guidance layers"]) == (1,)
    assert fields["Skip layer guidance stop"] == 0.6
    off = _run(ctx, _params(skip_layer_guidance_scale=0.0, skip_guidance_layers=(1,)))
    assert np.array_equal(np.asarray(off.images[0].image), before)
    assert "Skip layer guidance" not in parse_infotext(off.images[0].infotext)


def test_other_families_refuse_it_before_queuing(ctx):
    params = replace(_params(skip_layer_guidance_scale=3.0), checkpoint="sd1")
    request = GenerationRequest(kind="txt2img", params=params, owner="test")
    with pytest.raises(RequestError, match="Skip layer guidance is for SD 3.5 models; sd1"):
        ctx.generation.submit(request)
