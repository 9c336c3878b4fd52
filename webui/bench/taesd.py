"""The benchmark's "4 steps, CFG 1, full VAE vs TAESD decode" rows (`--taesd`).

Ours: txt2img through the API with the server's VAE, then with `override_settings`
`sd_vae_decode_method: TAESD` (A1111's draft decode). Bare diffusers: the same
`StableDiffusionPipeline` call, then the same pipeline with `vae=AutoencoderTiny`. Both
TAESDs are one full-size model (madebyollin's architecture, 64 channels) with random
weights, written into the server's `models/VAE-approx` in the decoder-only file layout
users have: like the benchmark's checkpoint, only the sizes matter. Rounds alternate
between ours and bare diffusers.

This module must never import a UI library.
"""

from __future__ import annotations

import base64
import io
import statistics
import time
from pathlib import Path

import torch

from .report import Row, seconds

STEPS, CFG = 4, 1.0


def full_size_taesd(seed: int = 0):
    """madebyollin's TAESD architecture (diffusers' defaults: 64 channels) with random weights."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    model = AutoencoderTiny().eval()
    with torch.no_grad():  # initial weights decode to near-grey: make the work realistic
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model


def write_taesd(models_dir: Path, model) -> None:
    """The model's decoder as `taesd_decoder.safetensors` (madebyollin's keys) in
    `models_dir/VAE-approx`, where the server finds it."""
    from safetensors.torch import save_file

    state = {}
    for key, value in model.decoder.state_dict().items():
        _, index, rest = key.split(".", 2)  # layers.N.rest -> N+1 (madebyollin's clamp is 0)
        state[f"{int(index) + 1}.{rest}"] = value.contiguous()
    folder = models_dir / "VAE-approx"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "taesd_decoder.safetensors"))


def taesd_rows(server, bare, request: dict, rounds: int, models_dir: Path, raw: dict,
               model=None) -> list[Row]:  # fmt: skip
    """Two rows: full VAE and TAESD decode, each ours vs bare diffusers (alternating);
    `model`: the TAESD both use (default: `full_size_taesd`)."""
    from diffusers import StableDiffusionPipeline

    from . import measure

    tiny = model if model is not None else full_size_taesd()
    write_taesd(models_dir, tiny)
    bare_taesd = StableDiffusionPipeline(**{**bare.components, "vae": tiny})
    bare_taesd.set_progress_bar_config(disable=True)
    request = {**request, "steps": STEPS, "cfg_scale": CFG}
    ours_request = {**request, "sampler_name": "Euler"}
    cases = {
        "full VAE": (ours_request, bare, "bare diffusers"),
        "TAESD decode": ({**ours_request, "override_settings": {"sd_vae_decode_method": "TAESD"}},
                         bare_taesd, "bare diffusers, vae=AutoencoderTiny"),
    }  # fmt: skip
    rows, results = [], {}
    for name, (body, pipe, reference) in cases.items():
        ours = lambda body=body: server.call("POST", "/txt2img", body)  # noqa: E731
        theirs = lambda pipe=pipe: _timed(lambda: measure.bare_txt2img(pipe, request))  # noqa: E731
        times, images = _alternate(ours, theirs, rounds)
        results[name] = times
        raw[f"cfg1_{name.replace(' ', '_')}"] = {
            **{k: measure.summary(v) for k, v in times.items()},
            "max_pixel_difference": _pixel_difference(*images),
        }
        ours_min, theirs_min = min(times["ours"]), min(times["diffusers"])
        size = f"{request['width']}x{request['height']}"
        rows.append(Row(
            f"{STEPS} steps, CFG 1, {name}: txt2img via API vs bare diffusers ({size}, min of "
            f"{rounds})",
            f"{seconds(ours_min)} (median {seconds(statistics.median(times['ours']))})",
            f"{reference} {seconds(theirs_min)}", ours_min / theirs_min,
        ))  # fmt: skip
    for side in ("ours", "diffusers"):
        raw[f"cfg1_taesd_speedup_{side}"] = min(results["full VAE"][side]) / min(
            results["TAESD decode"][side]
        )
    return rows


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def _alternate(ours, theirs, rounds: int) -> tuple[dict[str, list[float]], tuple]:
    """Times of `rounds` alternating runs after one warm-up each; the warm-up images."""
    (answer, _), (image, _) = ours(), theirs()
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for i in range(rounds):
        order = (("ours", ours), ("diffusers", theirs))
        for name, fn in order if i % 2 == 0 else reversed(order):
            times[name].append(fn()[1])
    return times, (answer["images"][0], image)


def _pixel_difference(encoded: str, image) -> int:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(encoded.split(",")[-1]))) as ours:
        a = np.asarray(ours.convert("RGB"), dtype=np.int16)
        size = ours.size
    b = np.asarray(image.convert("RGB").resize(size), dtype=np.int16)  # --tiny: other sizes
    return int(np.abs(a - b).max())
