"""What the transformer ControlNet tests (FLUX.1's, SD 3.5's) share: a picture with edges,
and jobs submitted to the generation service as the extension's API clients send units
(`ctx.checkpoint`: the test's checkpoint), 64x64, a few steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from webui.core.params import Txt2ImgParams
from webui.core.params_img2img import HiresParams, Img2ImgParams
from webui.services.generation import GenerationRequest


def shapes() -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 12, 40, 50), outline="black", width=3)
    draw.ellipse((30, 8, 58, 36), fill="black")
    return image


def submit(ctx, units: list | None, kind: str = "txt2img", **changes):
    cls = Img2ImgParams if kind == "img2img" else Txt2ImgParams
    params = cls(**{"prompt": "a house", "steps": 4, "width": 64, "height": 64,
                    "seed": 5, "cfg_scale": 1, "negative_prompt": "fog",
                    "checkpoint": ctx.checkpoint, "save_images": False, **changes})  # fmt: skip
    alwayson = {"controlnet": {"args": units}} if units is not None else {}
    return ctx.generation.submit(GenerationRequest(kind, params, "test", alwayson=alwayson))


def run(ctx, units: list | None, kind: str = "txt2img", **changes):
    job = submit(ctx, units, kind, **changes)
    assert job.done.wait(300), "job did not finish"
    return job


def pixels(job) -> np.ndarray:
    assert job.state == "done", job.error
    return np.asarray(job.images[0].image.convert("RGB"), np.int16)


def calls_seen(ctx, units: list, look: Callable[[dict], Any], **changes) -> tuple[np.ndarray, list]:
    """The image of a job, and `look(kwargs)` of each call of the loaded model's transformer."""
    (model,) = ctx.models._loaded.values()
    seen: list = []

    def hook(module, args, kwargs, output):
        seen.append(look(kwargs))

    handle = model.pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        image = pixels(run(ctx, units, **changes))
    finally:
        handle.remove()
    return image, seen


def img2img_and_hires(ctx, unit: Callable, calls_guided: Callable) -> list:
    """img2img: a unit without an image uses the init image and changes it; hires. fix
    (1.5x): the image at the target size, and what `calls_guided` saw of its calls."""
    init = {"init_images": (shapes(),), "denoising_strength": 0.8}
    plain = pixels(run(ctx, None, "img2img", **init))
    guided = pixels(run(ctx, [unit(image=None)], "img2img", **init))
    assert np.abs(guided - plain).mean() > 1
    hires = {"hires": HiresParams(scale=1.5, steps=2, denoising_strength=0.5), "steps": 2}
    image, seen = calls_guided(ctx, [unit()], **hires)
    assert image.shape == (96, 96, 3) and len(seen) > 2
    return seen
