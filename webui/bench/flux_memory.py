"""FLUX memory rows (issue 12): peak RAM, parameter bytes and forward time of a stack of
full-width FLUX.1 blocks with random weights, stored as bf16, fp8 and GGUF.

`python -m webui.bench.flux_memory [--blocks N] [--dtype float32|bfloat16] [--runs R]`
writes a BFL-layout transformer-only file of N double + N single blocks (width 3072, 24
heads, T5 width 4096; random weights) in each storage: bf16 safetensors, fp8 e4m3fn
safetensors (2-D weights fp8, the rest bf16, as the published fp8 files), GGUF Q8_0 and
GGUF Q4_K (gguf's writer cannot quantize K-quants: every weight whose rows are whole
256-blocks gets valid random Q4_K blocks, the rest Q8_0, `tiny_flux.write_gguf`). Each
file is loaded in its own child process through the code a user's file takes
(`FluxFamily.spec_from_shapes`, then the family's transformer loader: `flux_files`,
`flux_gguf`, `weight_storage`) and runs R forwards at 256 image + 256 text tokens. Per
storage: the child's peak RSS (VmHWM: load and forwards), its RSS after imports, the
parameter bytes as stored, seconds per forward (median), and per double and per single
block their bytes and seconds (forward hooks), from which the full model (19 double + 38
single blocks) is extrapolated: parameters and time exactly per block, peak RSS above the
import baseline scaled by the parameter bytes. Prints a table and writes JSON;
`--tiny` (width 64, one block pair, one timed forward, children in parallel) is the
plumbing run of the tests.

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
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .report import Row, seconds, table, write_json

log = logging.getLogger(__name__)

FULL_SIZE = {"heads": 24, "head_dim": 128, "text_width": 4096, "pooled": 768}
TINY_SIZE = {"heads": 2, "head_dim": 32, "text_width": 32, "pooled": 32}
FULL_MODEL = {"double": 19, "single": 38}  # FLUX.1 dev / schnell
STORAGES = ("bf16", "fp8_e4m3fn", "gguf_q8_0", "gguf_q4_k")
TOKENS = 256  # image tokens (a 16x16 grid of packed latents) and text tokens each
DEFAULT_BLOCKS = 3  # bf16: 2.9 GB of blocks; loaded for fp32 compute 5.8 GB (fits ~12 GB)
DEFAULT_JSON = Path.home() / ".cache" / "webui-bench" / "results" / "flux_memory.json"


# --- the files --------------------------------------------------------------------------
def random_state(size: dict, blocks: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A BFL-layout FLUX.1-dev transformer of `blocks` double + `blocks` single blocks
    with random bf16 weights (names and shapes from diffusers' class on the meta device,
    renamed by `tiny_flux.bfl_transformer_state`)."""
    from diffusers import FluxTransformer2DModel

    from ..model_manager.flux_keys import rope_axes
    from ..model_manager.tiny_flux import bfl_transformer_state

    with torch.device("meta"):
        model = FluxTransformer2DModel(
            in_channels=64, num_layers=blocks, num_single_layers=blocks,
            attention_head_dim=size["head_dim"], num_attention_heads=size["heads"],
            joint_attention_dim=size["text_width"], pooled_projection_dim=size["pooled"],
            guidance_embeds=True, axes_dims_rope=tuple(rope_axes(size["head_dim"])),
        )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, meta in bfl_transformer_state(model).items():
        if name.endswith(".scale"):  # RMSNorm scales: ones, as trained models have near 1
            state[name] = torch.ones(meta.shape, dtype=torch.bfloat16)
        else:
            values = torch.randn(meta.shape, generator=gen, dtype=torch.bfloat16)
            state[name] = values.mul_(0.02)
    return state


def write_file(storage: str, state: dict[str, torch.Tensor], folder: Path) -> Path:
    """`state` as a user's file of that storage."""
    from safetensors.torch import save_file

    from ..model_manager.tiny_flux import write_gguf

    if storage == "bf16":
        path = folder / "flux-stack-bf16.safetensors"
        save_file(state, str(path))
    elif storage == "fp8_e4m3fn":
        path = folder / "flux-stack-fp8_e4m3fn.safetensors"
        fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()}
        save_file(fp8, str(path))
    elif storage in ("gguf_q8_0", "gguf_q4_k"):
        path = folder / f"flux-stack-{storage.removeprefix('gguf_').upper()}.gguf"
        write_gguf(state, path, kquant="Q4_K" if storage == "gguf_q4_k" else None)
    else:
        raise ValueError(f"unknown storage {storage!r}; expected one of {STORAGES}")
    return path


# --- the child process -------------------------------------------------------------------
def load_transformer(path: Path, dtype: torch.dtype):
    """The transformer of a BFL-layout file, loaded as a user's file is."""
    from ..core.families.flux import FluxFamily, _component
    from ..model_manager.loader import read_shapes

    shapes = read_shapes(path)
    spec = FluxFamily().spec_from_shapes(shapes)
    if spec is None:
        raise RuntimeError(f"{path.name}: not recognised as a FLUX transformer")
    return _component("transformer", path, "", shapes, spec, dtype)


def forward_inputs(config, dtype: torch.dtype) -> dict:
    """One call's inputs: 256 image tokens (a 16x16 grid) and 256 text tokens."""
    gen = torch.Generator().manual_seed(0)
    side = int(TOKENS**0.5)
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    inputs = {
        "hidden_states": torch.randn(1, TOKENS, config.in_channels, generator=gen),
        "encoder_hidden_states": torch.randn(1, TOKENS, config.joint_attention_dim, generator=gen),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=gen),
        "timestep": torch.tensor([0.5]),
        "img_ids": img_ids.reshape(-1, 3),
        "txt_ids": torch.zeros(TOKENS, 3),
        "guidance": torch.tensor([3.5]) if config.guidance_embeds else None,
    }
    return {k: v.to(dtype) if v is not None and v.is_floating_point() else v
            for k, v in inputs.items()}  # fmt: skip


class BlockTimer:
    """Seconds spent inside the double and the single blocks (forward hooks)."""

    def __init__(self, model) -> None:
        self.totals = {"double": 0.0, "single": 0.0}
        self._started: dict[int, float] = {}
        for kind, blocks in (("double", model.transformer_blocks),
                             ("single", model.single_transformer_blocks)):  # fmt: skip
            for block in blocks:
                block.register_forward_pre_hook(self._start)
                block.register_forward_hook(lambda m, a, o, kind=kind: self._stop(m, kind))

    def _start(self, module, args) -> None:
        self._started[id(module)] = time.perf_counter()

    def _stop(self, module, kind: str) -> None:
        self.totals[kind] += time.perf_counter() - self._started.pop(id(module))

    def take(self) -> dict[str, float]:
        totals, self.totals = self.totals, {"double": 0.0, "single": 0.0}
        return totals


def child(storage: str, path: Path, dtype: torch.dtype, runs: int) -> dict:
    """Run in the child process: load `path`, run one warm-up and `runs` forwards."""
    import diffusers  # noqa: F401 - the import baseline includes what loading imports

    from ..model_manager.flux_gguf import quant_types
    from ..model_manager.weight_storage import parameter_bytes
    from ..model_manager.weight_storage import storage as storage_of
    from .children import _peak_rss_bytes

    baseline = _peak_rss_bytes()
    started = time.perf_counter()
    model = load_transformer(path, dtype)
    load_seconds = time.perf_counter() - started
    after_load = _peak_rss_bytes()
    inputs = forward_inputs(model.config, dtype)
    timer = BlockTimer(model)
    forwards, doubles, singles = [], [], []
    with torch.inference_mode():
        for i in range(runs + 1):
            started = time.perf_counter()
            model(**inputs, return_dict=False)
            elapsed, inside = time.perf_counter() - started, timer.take()
            if i:  # the first call is a warm-up
                forwards.append(elapsed)
                doubles.append(inside["double"])
                singles.append(inside["single"])
    n_double, n_single = len(model.transformer_blocks), len(model.single_transformer_blocks)
    double_bytes = sum(parameter_bytes(b) for b in model.transformer_blocks)
    single_bytes = sum(parameter_bytes(b) for b in model.single_transformer_blocks)
    return {
        "storage": storage, "file_bytes": path.stat().st_size, "compute_dtype": str(dtype),
        "blocks": {"double": n_double, "single": n_single},
        "stored_as": storage_of(model) or str(next(model.parameters()).dtype),
        "gguf_types": quant_types(model),
        "rss_after_imports": baseline, "rss_after_load": after_load,
        "peak_rss": _peak_rss_bytes(), "load_seconds": load_seconds,
        "parameter_bytes": parameter_bytes(model),
        "double_block_bytes": double_bytes / n_double,
        "single_block_bytes": single_bytes / n_single,
        "forward_seconds": forwards, "forward_median": statistics.median(forwards),
        "double_block_seconds": statistics.median(doubles) / n_double,
        "single_block_seconds": statistics.median(singles) / n_single,
    }  # fmt: skip


def run_child(storage: str, path: Path, dtype: str, runs: int) -> dict:
    cmd = [sys.executable, "-m", "webui.bench.flux_memory", "--child", storage,
           "--file", str(path), "--dtype", dtype, "--runs", str(runs)]  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"FLUX memory child {storage} failed ({proc.returncode}): {tail}")
    result = json.loads(lines[-1])
    log.info("%s: peak RSS %.2f GiB, %.2f s per forward", storage, result["peak_rss"] / 2**30,
             result["forward_median"])  # fmt: skip
    return result


# --- the rows -----------------------------------------------------------------------------
def gib(value: float) -> str:
    """GiB, or MiB below one GiB (a block pair, `--tiny`)."""
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def full_model(result: dict) -> dict:
    """The full FLUX.1 (19 double + 38 single blocks) from one stack's figures."""
    n = result["blocks"]
    block_bytes = {k: result[f"{k}_block_bytes"] for k in ("double", "single")}
    block_seconds = {k: result[f"{k}_block_seconds"] for k in ("double", "single")}
    stack_bytes = sum(block_bytes[k] * n[k] for k in n)
    stack_seconds = sum(block_seconds[k] * n[k] for k in n)
    params = (
        result["parameter_bytes"]
        - stack_bytes
        + sum(block_bytes[k] * FULL_MODEL[k] for k in FULL_MODEL)
    )
    forward = (
        result["forward_median"]
        - stack_seconds
        + sum(block_seconds[k] * FULL_MODEL[k] for k in FULL_MODEL)
    )
    above = result["peak_rss"] - result["rss_after_imports"]
    rss = result["rss_after_imports"] + above * params / result["parameter_bytes"]
    return {"parameter_bytes": params, "forward_seconds": forward, "peak_rss": rss}


def rows_of(results: list[dict], runs: int) -> list[Row]:
    base = next((r for r in results if r["storage"] == "bf16"), results[0])
    rows = []
    for r in results:
        n = r["blocks"]
        stack = f"{n['double']}+{n['single']} blocks"
        full, full_base = full_model(r), full_model(base)
        pair = _pair(r)
        pair_base = _pair(base)
        name = f"FLUX {r['storage']} file, compute {r['compute_dtype'].removeprefix('torch.')}"
        rows += [
            Row(f"{name}: peak RSS, load + forward, {stack}", gib(r["peak_rss"]),
                f"bf16 {gib(base['peak_rss'])}", r["peak_rss"] / base["peak_rss"]),
            Row(f"{name}: parameter bytes as stored, {stack}", gib(r["parameter_bytes"]),
                f"bf16 {gib(base['parameter_bytes'])}",
                r["parameter_bytes"] / base["parameter_bytes"]),
            Row(f"{name}: seconds per forward, {TOKENS}+{TOKENS} tokens, median of {runs}",
                seconds(r["forward_median"]), f"bf16 {seconds(base['forward_median'])}",
                r["forward_median"] / base["forward_median"]),
            Row(f"{name}: per double+single block pair", f"{gib(pair[0])}, {seconds(pair[1])}",
                f"bf16 {gib(pair_base[0])}, {seconds(pair_base[1])}", pair[0] / pair_base[0]),
            Row(f"{name}: full FLUX.1 (19 double + 38 single), extrapolated",
                f"~{gib(full['peak_rss'])} peak RSS, {gib(full['parameter_bytes'])} parameters, "
                f"{seconds(full['forward_seconds'])} per forward",
                f"bf16 ~{gib(full_base['peak_rss'])}, {gib(full_base['parameter_bytes'])}, "
                f"{seconds(full_base['forward_seconds'])}", full["peak_rss"] / full_base["peak_rss"]),
        ]  # fmt: skip
    return rows


def _pair(result: dict) -> tuple[float, float]:
    """Bytes and seconds of one double plus one single block."""
    return (result["double_block_bytes"] + result["single_block_bytes"],
            result["double_block_seconds"] + result["single_block_seconds"])  # fmt: skip


# --- the command --------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS,
                        help="double blocks, and as many single blocks")  # fmt: skip
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (float32: the CPU's default)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="timed forwards after a warm-up")
    parser.add_argument("--storages", default=",".join(STORAGES))
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--tiny", action="store_true", help="width 64, one block pair")
    parser.add_argument("--child", choices=STORAGES, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.runs < 1:
        parser.error("--blocks and --runs must be at least 1")
    unknown = set(args.storages.split(",")) - set(STORAGES)
    if unknown:
        parser.error(f"--storages: unknown {sorted(unknown)}; expected some of {STORAGES}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.child:
        result = child(args.child, args.file, dtype, args.runs)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    size, blocks = (TINY_SIZE, 1) if args.tiny else (FULL_SIZE, args.blocks)
    runs = 1 if args.tiny else args.runs
    storages = [s for s in STORAGES if s in args.storages.split(",")]
    with tempfile.TemporaryDirectory(prefix="flux-memory-", dir=args.workdir) as folder:
        state = random_state(size, blocks)
        paths = {s: write_file(s, state, Path(folder)) for s in storages}
        del state
        cases = [(s, paths[s], args.dtype, runs) for s in storages]
        if args.tiny:  # plumbing only: the children may share the cores
            with ThreadPoolExecutor(max_workers=len(cases)) as pool:
                results = list(pool.map(lambda case: run_child(*case), cases))
        else:  # one at a time: their times must not share the cores
            results = [run_child(*case) for case in cases]
    rows = rows_of(results, runs)
    conditions = {"blocks": blocks, "size": size, "tokens": TOKENS, "compute_dtype": args.dtype,
                  "runs": runs, "cpu_count": os.cpu_count(),
                  "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
                  "torch": torch.__version__, "tiny": args.tiny}  # fmt: skip
    raw = {"results": results, "full_model": {r["storage"]: full_model(r) for r in results}}
    print(table(rows))  # noqa: T201 - the benchmark's output
    write_json(args.json, rows, conditions, raw)
    log.info("JSON: %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
