"""The Speed rows of the benchmark (issue 16): few steps, DeepCache, the fastest combination.

`python -m webui.bench.speed` starts a server process on random-weight checkpoints of the
SD 1.5 and SD 2.1 (SD-Turbo's) architectures and times, alternating with a bare diffusers
pipeline of the same file in the same run (minimum of `--rounds`):

- a 1-step SD-Turbo-architecture image (Euler a, CFG 1) vs diffusers' SD-Turbo recipe
  (`num_inference_steps=1, guidance_scale=0.0`);
- DeepCache (interval 3) on vs off, ours, and vs bare diffusers with the same steps;
- the fastest sane combination on an ordinary model (DeepCache 3 + NGMS + token merging
  0.5) vs bare diffusers' default for the same steps (goal: at least 2x faster).

The images are noise (random weights); only the times mean anything. This module must
never download anything and never import a UI library.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .model import SD15_SCHEDULER, SD15_TEXT, SD15_UNET, SD15_VAE, default_cache_dir

log = logging.getLogger(__name__)

SD21_NAME = "bench-random-sd21.safetensors"
# stabilityai/sd-turbo (= SD 2.1 base) unet and text_encoder configs, diffusers layout
SD21_UNET = {**SD15_UNET, "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024,
             "use_linear_projection": True}  # fmt: skip
SD21_TEXT = {**SD15_TEXT, "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
             "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512,
             "pad_token_id": 0}  # fmt: skip
_BETAS = {k: SD15_SCHEDULER[k] for k in ("beta_start", "beta_end", "beta_schedule")}
PROMPT, NEGATIVE = "a lighthouse on a cliff at dawn, detailed", "blurry, low quality"


def build_sd21_pipeline(seed: int = 0):
    """A StableDiffusionPipeline with SD 2.1's (SD-Turbo's) architecture, random weights."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..model_manager.tiny import _tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD21_UNET).eval()
        vae = AutoencoderKL(**SD15_VAE).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD21_TEXT)).eval()
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(open_clip=True), unet=unet,
        scheduler=EulerDiscreteScheduler(**_BETAS, timestep_spacing="trailing"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def ensure_sd21_checkpoint(cache: Path) -> Path:
    from ..model_manager.export import export_single_file

    path = cache / "models" / SD21_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("Creating the random-weight SD 2.1 benchmark checkpoint at %s (once)", path)
        export_single_file(build_sd21_pipeline(), path, dtype=torch.float16)
    return path


def tiny_checkpoints(cache: Path) -> dict[str, Path]:
    """The tiny random SD 1.x and SD 2.x test models in place of the full-size ones (for a
    machine without the ~10 GiB of free RAM two full-size pipelines need)."""
    from ..model_manager.tiny import save_tiny_checkpoint

    files = {}
    for name, family in (("bench-sd15", "sd1"), ("bench-sd21", "sd2")):
        files[name] = cache / "models" / f"{name}-tiny.safetensors"
        if not files[name].exists():
            files[name].parent.mkdir(parents=True, exist_ok=True)
            save_tiny_checkpoint(files[name], family, seed=0)
    return files


def alternate(ours: Callable[[], float], theirs: Callable[[], float], rounds: int) -> dict:
    """Seconds of each, alternating who goes first, after one warm-up each."""
    ours(), theirs()
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for i in range(rounds):
        order = [("ours", ours), ("theirs", theirs)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            times[name].append(fn())
    return {name: {"runs": [round(t, 3) for t in ts], "min": min(ts)} for name, ts in times.items()}


def bare_call(pipe, scheduler_cls: str, steps: int, cfg: float, size: int, **kwargs) -> float:
    import diffusers

    config = pipe.scheduler.config
    pipe.scheduler = getattr(diffusers, scheduler_cls).from_config(config, **kwargs)
    started = time.perf_counter()
    pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=cfg,
         width=size, height=size, generator=torch.Generator("cpu").manual_seed(1))  # fmt: skip
    return time.perf_counter() - started


def ours_call(server, checkpoint: str, steps: int, cfg: float, size: int, **extra) -> float:
    body = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": steps, "cfg_scale": cfg,
            "width": size, "height": size, "seed": 1, "save_images": False,
            "override_settings": {"sd_model_checkpoint": checkpoint,
                                  **extra.pop("override_settings", {})}, **extra}  # fmt: skip
    _, seconds = server.call("POST", "/txt2img", body)
    return seconds


def row(measure: str, result: dict, reference: str, target: float | None = None) -> dict:
    ours, theirs = result["ours"]["min"], result["theirs"]["min"]
    speedup = theirs / ours
    return {"measure": measure, "ours": f"{ours:.1f} s", "reference": f"{reference} {theirs:.1f} s",
            "speed-up": f"{speedup:.2f}x", "target": f"≥ {target:g}x" if target else "",
            "met": "" if target is None else ("yes" if speedup >= target else "NO"),
            "raw": result}  # fmt: skip


def run(args) -> list[dict]:
    from .measure import load_bare_pipeline
    from .model import ensure_sd15_checkpoint
    from .server import ServerProcess

    cache = Path(args.cache or default_cache_dir()).expanduser()
    if args.tiny:
        files = tiny_checkpoints(cache)
    else:
        files = {"bench-sd15": ensure_sd15_checkpoint(cache),
                 "bench-sd21": ensure_sd21_checkpoint(cache)}  # fmt: skip
    size, steps, rounds = args.size, args.steps, args.rounds
    rows = []
    with tempfile.TemporaryDirectory(prefix="webui-bench-speed-") as tmp:
        models = Path(tmp) / "models" / "Stable-diffusion"
        models.mkdir(parents=True)
        for name, path in files.items():
            shutil.copyfile(path, models / f"{name}.safetensors")
        server = ServerProcess(Path(tmp))
        try:
            server.start()
            server.wait_ready()  # the API answers 503 while the page is being built
            turbo = load_bare_pipeline(models / "bench-sd21.safetensors")
            result = alternate(
                lambda: ours_call(server, "bench-sd21", 1, 1.0, size, sampler_name="Euler a"),
                lambda: bare_call(turbo, "EulerAncestralDiscreteScheduler", 1, 0.0, size,
                                  timestep_spacing="trailing"), rounds)  # fmt: skip
            rows.append(row(f"1 step, SD-Turbo architecture, {size}², Euler a, CFG 1 (ours) / "
                            "guidance 0 (diffusers)", result, "bare diffusers"))  # fmt: skip
            turbo = None  # its memory back before the SD 1.5 pipeline loads
            sd15 = load_bare_pipeline(models / "bench-sd15.safetensors")
            bare = lambda: bare_call(sd15, "EulerDiscreteScheduler", steps, 7.0, size,  # noqa: E731
                                     timestep_spacing="linspace")  # fmt: skip
            plain = lambda **kw: ours_call(server, "bench-sd15", steps, 7.0, size,  # noqa: E731
                                           sampler_name="Euler", **kw)  # fmt: skip
            cached = {"override_settings": {"deepcache_interval": 3}}
            off_vs_on = alternate(lambda: plain(**cached), plain, rounds)
            off_vs_on = {"ours": off_vs_on["ours"], "theirs": off_vs_on["theirs"]}
            rows.append(row(f"DeepCache 3 on vs off (ours, {size}², {steps} steps Euler, CFG 7)",
                            off_vs_on, "ours off"))  # fmt: skip
            rows.append(row(f"DeepCache 3 vs bare diffusers ({size}², {steps} steps Euler, CFG 7)",
                            alternate(lambda: plain(**cached), bare, rounds), "bare diffusers"))  # fmt: skip
            fastest = {"s_min_uncond": 100.0, "override_settings": {
                "deepcache_interval": 3, "token_merging_ratio": 0.5}}  # fmt: skip
            default = lambda: bare_call(sd15, "PNDMScheduler", steps, 7.5, size)  # noqa: E731
            rows.append(row(f"DeepCache 3 + NGMS + token merging 0.5 vs bare diffusers' default "
                            f"(PNDM, CFG 7.5; {size}², {steps} steps)",
                            alternate(lambda: plain(**fastest), default, rounds),
                            "bare diffusers", target=2.0))  # fmt: skip
        finally:
            server.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m webui.bench.speed", description=__doc__)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cache", type=Path)
    p.add_argument("--tiny", action="store_true", help="the tiny test models (little RAM)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    load_before = os.getloadavg()
    rows = run(args)
    result = {"load_before": load_before, "load_after": os.getloadavg(), "rows": rows,
              "torch_threads": torch.get_num_threads()}  # fmt: skip
    out = (
        Path(args.cache or default_cache_dir()).expanduser()
        / "results"
        / ("speed-tiny.json" if args.tiny else "speed.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"load average {load_before[0]:.1f} -> {result['load_after'][0]:.1f}")
    for r in rows:
        print(
            " | ".join(
                str(r[k]) for k in ("measure", "ours", "reference", "speed-up", "target", "met")
            )
        )
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
