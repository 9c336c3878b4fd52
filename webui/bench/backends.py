"""`python -m webui.bench.backends`: CPU precisions and backends side by side, one image each.

One fresh process per variant (so memory, threads and compile caches never mix), the same
checkpoint, prompt, seed, size, steps, CFG and sampler (Euler), VAE decode included:

- `diffusers-fp32`: bare `StableDiffusionPipeline` (diffusers' defaults, fp32).
- `ours-fp32`, `ours-bf16`: our txt2img job (`--precision full` / `--precision bf16`);
  `ours-bf16-vae` adds `--vae-in-bf16`.
- `inductor`: bare diffusers with `unet.compile()` (torch.compile, inductor), its FX graph
  cache in `<cache>/inductor` (`TORCHINDUCTOR_CACHE_DIR`).
- `openvino`: bare diffusers with `unet.compile(backend="openvino")` (the `openvino` pip
  package's torch.compile backend), model cache in `<cache>/openvino`.
- `optimum-intel`: optimum-intel's `OVStableDiffusionPipeline`, exported once from a
  diffusers folder of the checkpoint to `<cache>/ov-export` (a cache of exports), static
  shape for the size. It runs in `--ov-python` (optimum-intel pins older transformers and
  huggingface_hub than the project's, so it lives in its own environment).

Each variant reports its setup (load), its first call (compile or export included), and
the best and median of the timed calls after it; the parent compares every image with
the `diffusers-fp32` one. The table and JSON go where `webui.bench` puts its own.

This module must never import a UI library.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("webui.bench.backends")

VARIANTS = ("diffusers-fp32", "ours-fp32", "ours-bf16", "ours-bf16-vae", "inductor", "openvino",
            "optimum-intel")  # fmt: skip
OURS_FLAGS = {"ours-fp32": ["--precision", "full"], "ours-bf16": ["--precision", "bf16"],
              "ours-bf16-vae": ["--precision", "bf16", "--vae-in-bf16"]}  # fmt: skip
REQUEST = {"prompt": "a lighthouse on a cliff at dusk, oil painting",
           "negative_prompt": "blurry, low quality", "steps": 4, "cfg_scale": 7.5,
           "width": 256, "height": 256, "seed": 1234}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m webui.bench.backends")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    p.add_argument("--tiny", action="store_true", help="tiny model, 64² (plumbing check)")
    p.add_argument("--runs", type=int, default=2, help="timed calls after the first (2)")
    p.add_argument("--steps", type=int), p.add_argument("--size", type=int)
    p.add_argument("--cache", type=Path, help="cache folder (~/.cache/webui-bench)")
    p.add_argument("--ov-python", default=sys.executable,
                   help="the Python with optimum-intel installed (default: this one)")  # fmt: skip
    p.add_argument("--json", type=Path, help="where to write the JSON")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--request", help=argparse.SUPPRESS)
    p.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    return p


def timed_calls(make_image, runs: int) -> dict:
    """The first call (compile/export/warm-up), then `runs` timed calls; the last image."""
    started = time.perf_counter()
    image = make_image()
    first = time.perf_counter() - started
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        image = make_image()
        times.append(time.perf_counter() - started)
    return {"first_s": first, "runs": times, "image": image}


def _bare(checkpoint: Path, request: dict, backend: str | None, cache: Path):
    from .measure import bare_txt2img, load_bare_pipeline

    pipe = load_bare_pipeline(checkpoint)
    if backend == "inductor":
        pipe.unet.compile()
    elif backend == "openvino":
        import openvino.torch  # noqa: F401 - registers the "openvino" torch.compile backend

        options = {"device": "CPU", "model_caching": True, "cache_dir": str(cache / "openvino")}
        pipe.unet.compile(backend="openvino", dynamic=False, options=options)
    return lambda: bare_txt2img(pipe, request)


def _ours(checkpoint: Path, request: dict, precision_flags: list[str], data: Path):
    from ..context import build_context
    from ..core.params import Txt2ImgParams
    from ..settings import parse_flags

    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / checkpoint.name
    if not link.exists():
        link.symlink_to(checkpoint.resolve())
    flags = ["--data-dir", str(data), "--no-download-sd-model", "--no-hashing",
             *precision_flags]  # fmt: skip
    ctx = build_context(parse_flags(flags))
    load = ctx.jobs.submit("load", None, owner="bench")
    load.done.wait()
    if load.state != "done":
        raise RuntimeError(f"load failed: {load.error}")
    params = Txt2ImgParams(**request, sampler_name="Euler", save_images=False).validated()

    def make_image():
        job = ctx.jobs.submit("txt2img", params, owner="bench")
        job.done.wait()
        if job.state != "done":
            raise RuntimeError(f"txt2img failed: {job.error}")
        make_image.infotext = job.result.images[0].infotext
        return job.result.images[0].image

    return make_image


def _optimum(checkpoint: Path, request: dict, cache: Path):
    """optimum-intel's exported pipeline (export once, then load the export)."""
    import torch
    from diffusers import EulerDiscreteScheduler
    from optimum.intel import OVStableDiffusionPipeline

    export = cache / "ov-export" / f"{checkpoint.stem}-{request['width']}x{request['height']}"
    if not (export / "model_index.json").exists():
        source = cache / "diffusers" / checkpoint.stem
        if not (source / "model_index.json").exists():
            raise RuntimeError(f"no diffusers folder {source}: the parent writes it first")
        pipe = OVStableDiffusionPipeline.from_pretrained(str(source), export=True, compile=False)
        pipe.reshape(batch_size=1, height=request["height"], width=request["width"],
                     num_images_per_prompt=1)  # fmt: skip
        pipe.save_pretrained(str(export))
    pipe = OVStableDiffusionPipeline.from_pretrained(str(export), compile=False)
    pipe.reshape(batch_size=1, height=request["height"], width=request["width"],
                 num_images_per_prompt=1)  # fmt: skip
    pipe.compile()
    pipe.scheduler = EulerDiscreteScheduler.from_config(
        pipe.scheduler.config, timestep_spacing="linspace"
    )

    def make_image():
        return pipe(
            request["prompt"], negative_prompt=request["negative_prompt"],
            num_inference_steps=request["steps"], guidance_scale=request["cfg_scale"],
            width=request["width"], height=request["height"],
            generator=torch.Generator("cpu").manual_seed(request["seed"]),
        ).images[0]  # fmt: skip

    return make_image


def _make(variant: str, checkpoint: Path, request: dict, cache: Path, info: dict):
    if variant == "diffusers-fp32":
        return _bare(checkpoint, request, None, cache)
    if variant in ("inductor", "openvino"):
        return _bare(checkpoint, request, variant, cache)
    if variant in OURS_FLAGS:
        import tempfile

        data = Path(tempfile.mkdtemp(prefix="bench-backends-", dir=cache / "runs"))
        return _ours(checkpoint, request, OURS_FLAGS[variant], data)
    if variant == "optimum-intel":
        started = time.perf_counter()
        make_image = _optimum(checkpoint, request, cache)
        info["export_and_compile_s"] = time.perf_counter() - started
        return make_image
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def child_main(args) -> int:
    """One variant in this process: prints one JSON line, saves the last image."""
    request = json.loads(args.request)
    if args.child == "diffusers-folder":  # optimum-intel exports from a diffusers folder
        from .measure import load_bare_pipeline

        load_bare_pipeline(args.checkpoint).save_pretrained(str(args.image))
        sys.stdout.write("{}\n")
        return 0
    info: dict = {"variant": args.child}
    started = time.perf_counter()
    make_image = _make(args.child, args.checkpoint, request, args.cache, info)
    info["setup_s"] = time.perf_counter() - started
    result = timed_calls(make_image, args.runs)
    result.pop("image").save(args.image)
    info.update(result, infotext=getattr(make_image, "infotext", ""))
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    os._exit(0)  # the job queue's threads and compile workers need no orderly stop


def run_child(variant: str, args, checkpoint: Path, request: dict, image: Path) -> dict:
    python = args.ov_python if variant == "optimum-intel" else sys.executable
    cmd = [python, "-m", "webui.bench.backends", "--child", variant, "--checkpoint",
           str(checkpoint), "--request", json.dumps(request), "--image", str(image),
           "--cache", str(args.cache), "--runs", str(args.runs)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(args.cache / "inductor")}  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    log.info("running %s", variant)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-3000:]
        log.warning("%s failed (%s): %s", variant, proc.returncode, tail)
        return {"variant": variant, "error": tail.strip().splitlines()[-1] if tail else "?",
                "error_tail": tail}  # fmt: skip
    return json.loads(lines[-1])


def pixel_difference(a: Path, b: Path) -> dict:
    import numpy as np
    from PIL import Image

    with Image.open(a) as x, Image.open(b) as y:
        d = np.abs(np.asarray(x.convert("RGB"), np.int16) - np.asarray(y.convert("RGB"), np.int16))
    return {"max": int(d.max()), "mean": float(d.mean())}


def rows_of(results: dict) -> list:
    """One row per variant against bare diffusers fp32, and the best against OpenVINO."""
    from .report import Row, seconds

    ref = results.get("diffusers-fp32", {})
    ref_min = min(ref["runs"]) if ref.get("runs") else None
    rows = []
    for variant, r in results.items():
        if "error" in r:
            rows.append(Row(f"image: {variant}", f"failed: {r['error'][:120]}"))
            continue
        best, median = min(r["runs"]), statistics.median(r["runs"])
        first = r.get("export_and_compile_s", 0) + r["first_s"]
        diff = r.get("difference")
        text = f"{seconds(best)} (median {seconds(median)}; first {seconds(first)})"
        if diff:
            text += f" · pixels max {diff['max']} mean {diff['mean']:.2f}"
        rows.append(Row(f"image: {variant}", text,
                        f"bare diffusers fp32 {seconds(ref_min)}" if ref_min else "",
                        best / ref_min if ref_min else None))  # fmt: skip
    ours = {v: min(r["runs"]) for v, r in results.items() if r.get("runs") and v != "optimum-intel"}
    peer = results.get("optimum-intel", {})
    if ours and peer.get("runs"):
        name = min(ours, key=ours.get)
        ratio = ours[name] / min(peer["runs"])
        rows.append(Row(f"best CPU backend ({name}) vs OpenVINO (optimum-intel)",
                        seconds(ours[name]), f"optimum-intel {seconds(min(peer['runs']))}",
                        ratio, "≤ 1.00", ratio <= 1.0))  # fmt: skip
    return rows


def run_variants(args, variants, checkpoint, request, conditions, path: Path) -> dict:
    """Each variant in its own process, one after the other; the JSON after each."""
    import diffusers
    import torch

    from .report import write_json

    conditions.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                      diffusers=diffusers.__version__)  # fmt: skip
    out, results = args.cache / "backends", {}
    reference = out / "diffusers-fp32.png"
    for variant in variants:
        image = out / f"{variant}.png"
        results[variant] = run_child(variant, args, checkpoint, request, image)
        if "error" not in results[variant] and reference.exists() and image != reference:
            results[variant]["difference"] = pixel_difference(image, reference)
        shown = {k: v for k, v in results[variant].items() if k != "error_tail"}
        log.info("%s: %s", variant, shown)
        conditions["load_after"] = os.getloadavg()
        write_json(path, rows_of(results), conditions, results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .model import default_cache_dir

    args.cache = Path(args.cache or default_cache_dir()).expanduser()
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        return child_main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from .cli import prepare_checkpoint
    from .report import conditions_text, table

    checkpoint, label, _ = prepare_checkpoint(args, args.cache)
    side = args.size or (64 if args.tiny else REQUEST["width"])
    request = {**REQUEST, "width": side, "height": side, "steps": args.steps or REQUEST["steps"]}
    (args.cache / "runs").mkdir(parents=True, exist_ok=True)
    (args.cache / "backends").mkdir(parents=True, exist_ok=True)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    folder = args.cache / "diffusers" / checkpoint.stem
    if "optimum-intel" in variants and not (folder / "model_index.json").exists():
        run_child("diffusers-folder", args, checkpoint, request, folder)
    conditions = {"checkpoint": label, **request, "rounds": args.runs, "rss_sizes": [],
                  "device": "cpu", "cpu_count": os.cpu_count(), "load_before": os.getloadavg(),
                  "command": " ".join(["python -m webui.bench.backends", *sys.argv[1:]])}  # fmt: skip
    name = "backends-tiny.json" if args.tiny else "backends.json"
    path = args.json or args.cache / "results" / name
    results = run_variants(args, variants, checkpoint, request, conditions, path)
    rows = rows_of(results)
    print(conditions_text(conditions))
    print(table(rows))
    print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
