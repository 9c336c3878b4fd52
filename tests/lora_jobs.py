"""Jobs through the queue for the network tests (FLUX and Z-Image LoRAs, embeddings): a
context over a data folder holding a checkpoint and LoRA files, a small txt2img job, and
its first image's pixels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from webui.context import build_context
from webui.core.params import Txt2ImgParams
from webui.settings import parse_flags


def lora_context(data: Path, checkpoint: Path, loras: list[Path] = ()):
    """A context whose only checkpoint is `checkpoint` (a file or a diffusers folder) and
    whose models/Lora holds `loras`; close it after."""
    folder = data / "models" / "Stable-diffusion"
    (data / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    if checkpoint.is_dir():
        shutil.copytree(checkpoint, folder / checkpoint.name)
    else:
        shutil.copy(checkpoint, folder)
    for lora in loras:
        shutil.copy(lora, data / "models" / "Lora")
    return build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))


def run_prompt(ctx, prompt: str, **fields):
    """A 64x64, 2-step txt2img job of `prompt` (seed 7, nothing saved); its result."""
    values = {"steps": 2, "width": 64, "height": 64, "seed": 7, "save_images": False, **fields}
    params = Txt2ImgParams(prompt=prompt, **values).validated()
    job = ctx.jobs.submit("txt2img", params, owner="test")
    assert job.done.wait(300), "job did not finish"
    assert job.state == "done", job.error
    return job.result


def run_flow(ctx, prompt: str, **fields):
    """`run_prompt` as the flow-matching families run: CFG 1, Euler."""
    return run_prompt(ctx, prompt, cfg_scale=1, sampler_name="Euler", **fields)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image)


def check_lora_tag(ctx, name: str, second: str | None = None) -> np.ndarray:
    """`<lora:name:w>` on a job of the context's checkpoint: weight 0 gives the image
    without it, 0.5 and 1 (with `second` at 0.7) change it step by step, the infotext names
    the LoRAs, and the next job without a tag is the image without it again. Returns that
    image's pixels."""
    from webui.imaging.infotext import parse_infotext

    before = pixels(run_flow(ctx, "a red cube"))
    zero = run_flow(ctx, f"a red cube <lora:{name}:0>")  # the tag's space stripped
    assert np.array_equal(pixels(zero), before)
    half = run_flow(ctx, f"a red cube <lora:{name}:0.5>")
    extra = f" <lora:{second}:0.7>" if second else ""
    full = run_flow(ctx, f"a red cube <lora:{name}:1>{extra}")
    assert not np.array_equal(pixels(half), before)
    assert not np.array_equal(pixels(full), pixels(half))
    hashes = parse_infotext(full.images[0].infotext)["Lora hashes"]
    assert all(f"{n}: " in hashes for n in (name, second) if n), hashes
    assert np.array_equal(pixels(run_flow(ctx, "a red cube")), before)
    return before
