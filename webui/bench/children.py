"""Peak-RSS measurement: one fresh process per (variant, size), so peaks never mix.

`run_rss_children` starts `python -m webui.bench --rss-child VARIANT ...` for each case
and reads the JSON line each prints. A child loads the checkpoint and makes one image:

- `diffusers`: `StableDiffusionPipeline.from_single_file` with diffusers' defaults.
- `ours`: our txt2img through the job queue, default flags and options.
- `ours-lowmem`: the same with our memory features: `--lowram` (on the CPU: fp16 weights
  in RAM, computed in fp32) and VAE tiling from the VAE's native tile size.

The peak is the child's VmHWM (load and generation together).

This module must never import a UI library.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

VARIANTS = ("diffusers", "ours", "ours-lowmem")


def _peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries the parent's peak over
    fork + exec into a child's ru_maxrss, which would make every child look as big as the
    benchmark process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def rss_child(variant: str, checkpoint: Path, size: int, steps: int, lowmem_tile: int) -> dict:
    """Run in the child process: load, generate one image, report the peaks."""
    request = {"prompt": "a lighthouse on a cliff at dusk", "negative_prompt": "blurry",
               "steps": steps, "cfg_scale": 7.0, "width": size, "height": size, "seed": 1}  # fmt: skip
    started = time.perf_counter()
    if variant == "diffusers":
        from .measure import bare_txt2img, load_bare_pipeline

        pipe = load_bare_pipeline(checkpoint)
        after_load = _peak_rss_bytes()
        bare_txt2img(pipe, request)
    elif variant in ("ours", "ours-lowmem"):
        after_load = _ours(checkpoint, request, lowmem_tile if variant == "ours-lowmem" else 0)
    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    return {
        "variant": variant,
        "size": size,
        "peak_rss": _peak_rss_bytes(),
        "peak_rss_after_load": after_load,
        "seconds": time.perf_counter() - started,
    }


def _ours(checkpoint: Path, request: dict, lowmem_tile: int) -> int:
    from ..context import build_context
    from ..core.params import Txt2ImgParams
    from ..settings import parse_flags

    with tempfile.TemporaryDirectory(prefix="bench-rss-") as data:
        folder = Path(data) / "models" / "Stable-diffusion"
        folder.mkdir(parents=True)
        (folder / checkpoint.name).symlink_to(checkpoint.resolve())
        flags = ["--data-dir", data, "--no-download-sd-model", "--no-hashing"]
        ctx = build_context(parse_flags(flags + (["--lowram"] if lowmem_tile else [])))
        try:
            if lowmem_tile:
                ctx.options.set("vae_tiling_threshold", lowmem_tile)
            load = ctx.jobs.submit("load", None, owner="bench")
            load.done.wait()
            if load.state != "done":
                raise RuntimeError(f"load failed: {load.error}")
            after_load = _peak_rss_bytes()
            params = Txt2ImgParams(**request, sampler_name="DPM++ 2M", save_images=False)
            params = params.validated()  # DPM++ 2M: one step is enough to measure memory
            job = ctx.jobs.submit("txt2img", params, owner="bench")
            job.done.wait()
            if job.state != "done":
                raise RuntimeError(f"txt2img failed: {job.error}")
        finally:
            ctx.close()
    return after_load


def run_rss_children(
    checkpoint: Path, sizes: list[int], steps: int, lowmem_tile: int, *, parallel: bool = False
) -> list[dict]:
    cases = [(variant, size) for size in sizes for variant in VARIANTS]

    def one(case):
        variant, size = case
        cmd = [sys.executable, "-m", "webui.bench", "--rss-child", variant,
               "--checkpoint", str(checkpoint), "--size", str(size), "--steps", str(steps),
               "--lowmem-tile", str(lowmem_tile)]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        root = Path(__file__).resolve().parents[2]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout)[-2000:]
            raise RuntimeError(f"RSS child {variant} {size}² failed ({proc.returncode}): {tail}")
        result = json.loads(lines[-1])
        log.info("peak RSS %s %d²: %.2f GiB", variant, size, result["peak_rss"] / 2**30)
        return result

    if parallel:
        with ThreadPoolExecutor(max_workers=len(cases)) as pool:
            return list(pool.map(one, cases))
    return [one(case) for case in cases]


def child_main(args) -> int:
    """Entry of `python -m webui.bench --rss-child ...`: prints one JSON line."""
    result = rss_child(args.rss_child, Path(args.checkpoint), args.size, args.steps,
                       args.lowmem_tile)  # fmt: skip
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0
