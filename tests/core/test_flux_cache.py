"""First Block Cache and TaylorSeer on the tiny FLUX model through the job queue: fewer
attention computations, an image close to the plain one, the infotext field, nothing left
on the transformer after the job."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from webui.context import build_context
from webui.core.params import Txt2ImgParams
from webui.imaging.infotext import parse_infotext
from webui.model_manager.tiny_flux import build_tiny_flux, save_all_in_one
from webui.settings import parse_flags

STEPS = 8


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    data = tmp_path_factory.mktemp("flux-cache")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    path = data / "models" / "Stable-diffusion" / "flux1-tiny-aio.safetensors"
    save_all_in_one(build_tiny_flux(seed=0), path, dtype=torch.float32)
    context = build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))
    yield context
    context.close()


class Counting:
    """An attention processor that counts the attention computations it does."""

    def __init__(self, inner, calls: list):
        self.inner, self.calls = inner, calls

    def __call__(self, *args, **kwargs):
        self.calls.append(1)
        return self.inner(*args, **kwargs)


def _run(ctx, options=None, **changes):
    params = Txt2ImgParams(**{"prompt": "a lighthouse", "steps": STEPS, "width": 64,
                              "height": 64, "seed": 3, "cfg_scale": 1, "save_images": False,
                              **changes}).validated()  # fmt: skip
    job = ctx.jobs.submit("txt2img", params, owner="test", options=options or {})
    assert job.done.wait(300), "job did not finish"
    assert job.state == "done", job.error
    return job.result


def _counted(ctx, options=None):
    """The job's result and how many attention computations its transformer did."""
    transformer = ctx.models.acquire(ctx.models.resolve("flux1-tiny-aio")).pipe.transformer
    calls: list = []
    processors = {name: Counting(proc, calls) for name, proc in transformer.attn_processors.items()}
    originals = transformer.attn_processors
    transformer.set_attn_processor(processors)
    try:
        return _run(ctx, options), len(calls)
    finally:
        transformer.set_attn_processor(originals)


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


@pytest.mark.parametrize(
    ("options", "field", "value"),
    [({"first_block_cache_threshold": 0.5}, "First Block Cache", 0.5),
     ({"taylorseer_interval": 3}, "TaylorSeer", 3)],
)  # fmt: skip
def test_a_cache_does_less_work_and_stays_close(ctx, options, field, value):
    plain, plain_calls = _counted(ctx)
    cached, cached_calls = _counted(ctx, options)
    assert plain_calls == STEPS * 2  # one double and one single block a step
    assert cached_calls < plain_calls * 0.8, (cached_calls, plain_calls)
    difference = np.abs(_pixels(cached) - _pixels(plain)).mean()
    assert difference < 0.25 * np.abs(_pixels(plain) - _pixels(plain).mean()).mean()
    assert parse_infotext(cached.images[0].infotext)[field] == value
    assert field not in parse_infotext(plain.images[0].infotext)
    assert np.array_equal(_pixels(_run(ctx)), _pixels(plain))  # no hook left behind
