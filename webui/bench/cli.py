"""`python -m webui.bench`: our web UI against bare diffusers, in one run on this machine.

Measures, with the same checkpoint, seed, size and steps:
(a) txt2img through our API and job queue (a real server process on 127.0.0.1) against a
    bare `StableDiffusionPipeline` call, in alternating rounds: the ratio of wall times;
(b) seconds per UNet step and achieved GFLOP/s against a matmul measured in the same run
    (also channels-last and, with --compile, torch.compile);
(c) peak RSS, one fresh process per case: ours with default settings, ours with the
    memory features (--lowram, VAE tiling), diffusers' defaults; at 512² by default, and
    at 1024² with --rss-1024 or --full (each 1024² process takes minutes on 2 cores);
(d) start to page served (launch.py), to UI ready and to model ready, checkpoint load
    time, switch time from the RAM cache;
(e) with --ray (needs the `ray` extra): jobs per minute with 1 and 2 Ray CPU workers
    against one process, and the head's overhead per job (`bench/cluster.py`);
(f) with --taesd: 4 steps at CFG 1 with the full VAE and with a TAESD decode, each against
    bare diffusers (`bench/taesd.py`).
Prints a table and writes JSON. `--tiny` runs the same on a tiny model, with the RSS
processes overlapping the rest: a quick end-to-end check (the tests use it) whose times
mean nothing; `--full` uses 512² and 20 steps; `--cuda` runs on the GPU.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("webui.bench")

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
NEGATIVE = "blurry, low quality"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m webui.bench", description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny model, 64², for tests (< 1 min)")
    p.add_argument("--full", action="store_true", help="512², 20 steps, 5 rounds")
    p.add_argument("--cuda", action="store_true", help="run on the CUDA GPU (fp16)")
    p.add_argument("--compile", action="store_true", help="also measure a torch.compile'd UNet")
    p.add_argument("--ray", action="store_true", help="also jobs/min with 1 and 2 Ray workers")
    p.add_argument("--ray-jobs", type=int, default=8, help="jobs per Ray case (8)")
    p.add_argument("--taesd", action="store_true", help="also 4 steps, CFG 1: full VAE vs TAESD")
    p.add_argument("--width", type=int), p.add_argument("--height", type=int)
    p.add_argument("--steps", type=int), p.add_argument("--rounds", type=int)
    p.add_argument("--rss-sizes", help="comma-separated sides for peak RSS (512,1024)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS processes")
    p.add_argument(
        "--rss-1024",
        action="store_true",
        help="also peak RSS at 1024² (3 processes of several minutes each)",
    )
    p.add_argument("--json", type=Path, help="where to write the JSON (default: in the cache)")
    p.add_argument("--cache", type=Path, help="cache folder (~/.cache/webui-bench)")
    for hidden in ("--rss-child", "--checkpoint"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--lowmem-tile", type=int, default=512, help=argparse.SUPPRESS)
    return p


def configure(args) -> dict:
    if args.tiny:
        base = {"width": 64, "height": 64, "steps": 2, "rounds": 2, "rss_sizes": [64],
                "unet_runs": 1, "matmul_n": 512, "matmul_seconds": 0.5}  # fmt: skip
    elif args.full:
        base = {"width": 512, "height": 512, "steps": 20, "rounds": 5, "rss_sizes": [512, 1024],
                "unet_runs": 3, "matmul_n": 2048, "matmul_seconds": 3.0}  # fmt: skip
    else:
        base = {"width": 256, "height": 256, "steps": 2, "rounds": 3, "rss_sizes": [512],
                "unet_runs": 2, "matmul_n": 2048, "matmul_seconds": 2.0}  # fmt: skip
    for key in ("width", "height", "steps", "rounds"):
        if getattr(args, key):
            base[key] = getattr(args, key)
    if args.rss_1024 and 1024 not in base["rss_sizes"]:
        base["rss_sizes"].append(1024)
    if args.rss_sizes:
        base["rss_sizes"] = [int(s) for s in args.rss_sizes.split(",") if s.strip()]
    if args.no_rss:
        base["rss_sizes"] = []
    return base


def prepare_checkpoint(args, cache: Path) -> tuple[Path, str, float]:
    started = time.perf_counter()
    if args.tiny:
        from ..model_manager.tiny import save_tiny_checkpoint

        path = cache / "models" / "bench-tiny-sd1.safetensors"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_tiny_checkpoint(path, "sd1", seed=0)
        label = "tiny SD 1.x (random weights)"
    else:
        from .model import ensure_sd15_checkpoint

        path = ensure_sd15_checkpoint(cache)
        label = "SD 1.5 architecture, random weights, fp16 single file"
    return path, label, time.perf_counter() - started


def prepare_data_dir(folder: Path, checkpoint: Path) -> None:
    """Two checkpoints (hard links to one file, so two paths that stay two checkpoints)."""
    models = folder / "models" / "Stable-diffusion"
    models.mkdir(parents=True, exist_ok=True)
    for name in ("bench-a", "bench-b"):
        link = models / f"{name}.safetensors"
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            os.link(checkpoint, link)
        except OSError:  # another file system: a copy
            shutil.copyfile(checkpoint, link)
    (folder / "config.json").write_text(
        '{"sd_model_checkpoint": "bench-a", "sd_checkpoints_limit": 1}'
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.rss_child:
        from .children import child_main

        logging.basicConfig(level=logging.WARNING)
        return child_main(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from .model import default_cache_dir
    from .report import conditions_text, table, write_json

    cache = Path(args.cache or default_cache_dir()).expanduser()
    rows, conditions, raw = run(args, cache)
    out = args.json or cache / "results" / ("tiny.json" if args.tiny else "latest.json")
    write_json(out, rows, conditions, raw)
    print(conditions_text(conditions))
    print(table(rows))
    print(f"JSON: {out}")
    return 0


def run(args, cache: Path):
    import diffusers
    import torch

    from .report import Row

    config = configure(args)
    device = "cuda" if args.cuda else "cpu"
    if args.cuda and not torch.cuda.is_available():
        raise SystemExit("--cuda: no CUDA device is available here")
    checkpoint, label, made = prepare_checkpoint(args, cache)
    conditions = {
        "checkpoint": label, "checkpoint_path": str(checkpoint), **config, "device": device,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_before": os.getloadavg(), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "command": " ".join(["python -m webui.bench", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip
    raw: dict = {"checkpoint_creation_s": made}
    rows: list[Row] = []
    rss = None
    if config["rss_sizes"] and args.tiny:  # a plumbing check: overlap the processes
        pool = ThreadPoolExecutor(max_workers=1)
        rss = pool.submit(_rss_part, args, config, checkpoint, raw)
        pool.shutdown(wait=False)
    (cache / "runs").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="webui-bench-", dir=cache / "runs") as tmp:
        data = Path(tmp) / "data"  # beside the checkpoint: hard links work
        prepare_data_dir(data, checkpoint)
        rows += _server_part(args, config, data, device, raw)
    if args.ray:
        from .cluster import cluster_rows

        rows += cluster_rows(checkpoint, config, raw, jobs=args.ray_jobs)
    if rss is not None:
        rows += rss.result()
    elif config["rss_sizes"]:  # alone on the machine: measured after the server stopped
        rows += _rss_part(args, config, checkpoint, raw)
    conditions["load_after"] = os.getloadavg()
    return rows, conditions, raw


def _server_part(args, config: dict, data: Path, device: str, raw: dict) -> list:
    from . import measure
    from .report import Row, seconds
    from .server import ServerProcess

    rows = []
    matmul, raw["matmul_dtype"], raw["matmul_by_dtype"] = measure.fastest_matmul(
        config["matmul_n"], config["matmul_seconds"], device=device
    )  # the "limit": the machine's fastest matmul dtype (bf16 on AMX CPUs)
    raw["matmul_gflops"] = matmul
    server = ServerProcess(data, flags=["--precision", "full"])  # fp32 as diffusers: same pixels
    try:
        raw["page_served_s"] = page_served = server.start()
        raw["ui_ready_s"] = ui_ready = server.wait_ready()
        server.call("POST", "/reload-checkpoint")  # waits for the start-up load
        raw["start_to_model_ready_s"] = time.perf_counter() - server.started
        server.call("POST", "/unload-checkpoint")
        _, raw["load_ours_s"] = server.call("POST", "/reload-checkpoint")
        measure.warm_imports()  # the server has its modules imported: time loading only
        started = time.perf_counter()
        bare = measure.load_bare_pipeline(Path(data / "models/Stable-diffusion/bench-a.safetensors"),
                                          device=device, half=args.cuda)  # fmt: skip
        raw["load_diffusers_s"] = time.perf_counter() - started
        request = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "steps": config["steps"],
                   "cfg_scale": 7.0, "width": config["width"], "height": config["height"],
                   "seed": 1234}  # fmt: skip
        rows.append(_alternate(server, bare, request, config["rounds"], raw))
        if args.taesd:  # bench/taesd.py: the draft decode, ours and diffusers'
            from .taesd import taesd_rows

            rows += taesd_rows(server, bare, request, config["rounds"], data / "models", raw)
        rows += _unet_rows(args, bare, config, matmul, device, raw)
        del bare
        import gc

        gc.collect()
        raw["switch_s"], raw["load_second_name_s"] = _switch(server)
    finally:
        server.stop()
        raw["server_log_tail"] = _tail(server.log_path)
    rows.append(Row("start to page served (launch.py --skip-install)", seconds(page_served),
                    target="≤ 3 s", met=page_served <= 3))  # fmt: skip
    rows.append(Row("start to UI ready (the real page, model loading)", seconds(ui_ready)))
    rows.append(Row("start to model ready (start-up checkpoint loaded)",
                    seconds(raw["start_to_model_ready_s"])))  # fmt: skip
    rows.append(Row("checkpoint load (API unload + reload)", seconds(raw["load_ours_s"]),
                    f"diffusers from_single_file {seconds(raw['load_diffusers_s'])}",
                    raw["load_ours_s"] / raw["load_diffusers_s"]))  # fmt: skip
    rows.append(Row("checkpoint switch from the RAM cache", seconds(raw["switch_s"]),
                    target="≤ 1 s", met=raw["switch_s"] <= 1))  # fmt: skip
    return rows


def _alternate(server, bare, request: dict, rounds: int, raw: dict):
    from . import measure
    from .report import Row, seconds

    ours_request = {**request, "sampler_name": "Euler"}

    def ours():
        answer, took = server.call("POST", "/txt2img", ours_request)
        return answer, took

    def theirs():
        started = time.perf_counter()
        image = measure.bare_txt2img(bare, request)
        return image, time.perf_counter() - started

    (answer, _), (image, _) = ours(), theirs()  # warm-up, and the images to compare
    times = {"ours": [], "diffusers": []}
    for i in range(rounds):
        order = (("ours", ours), ("diffusers", theirs))
        for name, fn in order if i % 2 == 0 else reversed(order):
            times[name].append(fn()[1])
    raw["txt2img"] = {name: measure.summary(t) for name, t in times.items()}
    raw["max_pixel_difference"] = _pixel_difference(answer["images"][0], image)
    # the minimum is the run least disturbed by anything else on the machine
    ours_min, theirs_min = min(times["ours"]), min(times["diffusers"])
    ours_med, theirs_med = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    size = f"{request['width']}x{request['height']}, {request['steps']} steps"
    ratio = ours_min / theirs_min
    raw["txt2img"]["ratio_min"], raw["txt2img"]["ratio_median"] = ratio, ours_med / theirs_med
    return Row(
        f"txt2img via API + queue vs bare diffusers ({size}, min of {rounds})",
        f"{seconds(ours_min)} (median {seconds(ours_med)})",
        f"bare diffusers {seconds(theirs_min)} (median {seconds(theirs_med)})",
        ratio,
        "≤ 1.02",
        ratio <= 1.02,
    )


def _pixel_difference(encoded: str, image) -> int:
    import numpy as np
    from PIL import Image

    payload = encoded.split(",", 1)[1] if encoded.startswith("data:") else encoded
    with Image.open(io.BytesIO(base64.b64decode(payload))) as ours:
        a = np.asarray(ours.convert("RGB"), dtype=np.int16)
    return int(np.abs(a - np.asarray(image.convert("RGB"), dtype=np.int16)).max())


def _unet_rows(args, bare, config: dict, matmul: float, device: str, raw: dict) -> list:
    from . import measure
    from .report import Row

    unet = bare.unet
    inputs = measure.unet_inputs(unet, config["width"], config["height"])
    flops = measure.unet_flops(unet, inputs)
    runs = config["unet_runs"]
    variants = {"default (SDPA, NCHW)": lambda: measure.unet_step_seconds(unet, inputs, runs)}

    def channels_last():
        with measure.channels_last(unet, inputs) as cl_inputs:
            return measure.unet_step_seconds(unet, cl_inputs, runs)

    variants["channels-last"] = channels_last
    if args.compile:
        import torch

        compiled = torch.compile(unet)
        started = time.perf_counter()
        measure.unet_step_seconds(compiled, inputs, 1, warmup=0)
        raw["compile_first_call_s"] = time.perf_counter() - started
        variants["torch.compile"] = lambda: measure.unet_step_seconds(compiled, inputs, runs)

    def lowram():  # last: it turns the weights to fp16 for good (the file is fp16 anyway)
        from ..model_manager.optimize import store_model_half

        store_model_half(unet)
        return measure.unet_step_seconds(unet, inputs, runs)

    if device == "cpu":
        variants["--lowram (fp16 weights in RAM)"] = lowram
    size = f"{config['width']}x{config['height']}"
    rows, raw["unet"] = [], {"gflop_per_step": flops / 1e9}
    for i, (name, fn) in enumerate(variants.items()):
        step = min(fn())
        gflops = flops / step / 1e9
        raw["unet"][name] = {"s_per_step": step, "gflops": gflops}
        ratio = gflops / matmul
        target = ("≥ 0.60", ratio >= 0.6) if i == 0 else ("", None)
        rows.append(Row(f"UNet step, CFG batch 2, {size}: {name}",
                        f"{step:.3f} s/step · {gflops:.0f} GFLOP/s",
                        f"matmul {raw['matmul_dtype']} {matmul:.0f} GFLOP/s", ratio,
                        *target))  # fmt: skip
    return rows


def _switch(server) -> tuple[float, float]:
    """Load a second checkpoint name (cold), then switch back to the first (RAM cache)."""
    server.call("POST", "/options", {"sd_checkpoints_limit": 2})
    started = time.perf_counter()
    server.call("POST", "/options", {"sd_model_checkpoint": "bench-b"})
    server.call("POST", "/reload-checkpoint")
    cold = time.perf_counter() - started
    started = time.perf_counter()
    server.call("POST", "/options", {"sd_model_checkpoint": "bench-a"})
    server.call("POST", "/reload-checkpoint")
    return time.perf_counter() - started, cold


def _rss_part(args, config: dict, checkpoint: Path, raw: dict) -> list:
    from .children import run_rss_children
    from .report import Row, gib

    tile = 64 if args.tiny else 512  # the VAE's native tile size: tile everything above it
    results = run_rss_children(checkpoint, config["rss_sizes"], 1, tile, parallel=args.tiny)
    raw["rss"] = results
    peak = {(r["variant"], r["size"]): r["peak_rss"] for r in results}
    rows = []
    for size in config["rss_sizes"]:
        reference = peak[("diffusers", size)]
        for variant, text in (("ours", "defaults"), ("ours-lowmem", "--lowram + VAE tiling")):
            ratio = peak[(variant, size)] / reference
            target = (
                ("≤ 0.60", ratio <= 0.6)
                if size == 1024 and variant == "ours-lowmem"
                else ("", None)
            )
            rows.append(Row(f"peak RSS {size}x{size}, 1 step: ours {text}", gib(peak[(variant, size)]),
                            f"diffusers defaults {gib(reference)}", ratio, *target))  # fmt: skip
    return rows


def _tail(path: Path, lines: int = 20) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
