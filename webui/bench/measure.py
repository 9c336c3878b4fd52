"""In-process measurements: matmul throughput, UNet step time and FLOPs, bare diffusers.

Everything here runs in the benchmark's own process, on the same threads the server uses
(torch's default: one per core), and never while the server is generating.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def matmul_gflops(n: int = 2048, seconds: float = 2.0, dtype=torch.float32, device="cpu") -> float:
    """Best achieved GFLOP/s of an n x n matrix product (the machine's practical peak)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        _sync(device)
        started = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def fastest_matmul(n: int, seconds: float, device: str = "cpu") -> tuple[float, str, dict]:
    """The machine's practical peak: the best of fp32 and bf16 matmul (fp16 too on a GPU);
    returns (GFLOP/s, its dtype's name, GFLOP/s of each dtype)."""
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device == "cuda" else [])
    each = {str(d).removeprefix("torch."): matmul_gflops(n, seconds / len(dtypes), d, device)
            for d in dtypes}  # fmt: skip
    best = max(each, key=each.get)
    return each[best], best, each


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def unet_inputs(unet, width: int, height: int, batch: int = 2):
    """One classifier-free-guidance step's UNet inputs (batch 2: negative and positive)."""
    param = next(unet.parameters())
    device, dtype = param.device, unet.dtype
    gen = torch.Generator("cpu").manual_seed(0)
    channels = unet.config.in_channels
    sample = torch.randn(batch, channels, height // 8, width // 8, generator=gen)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=gen)
    return (
        sample.to(device, dtype),
        torch.tensor(500, device=device),
        context.to(device, dtype),
    )


def unet_flops(unet, inputs) -> int:
    """FLOPs of one UNet call (matmuls, convolutions, attention), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    sample, t, context = inputs
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(sample, t, encoder_hidden_states=context)
    return int(counter.get_total_flops())


def unet_step_seconds(unet, inputs, runs: int, warmup: int = 1) -> list[float]:
    sample, t, context = inputs
    device = sample.device.type
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            _sync(device)
            started = time.perf_counter()
            unet(sample, t, encoder_hidden_states=context)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - started)
    return times


@contextmanager
def channels_last(unet, inputs):
    """The UNet and its input in channels-last memory format, restored afterwards."""
    unet.to(memory_format=torch.channels_last)
    sample, t, context = inputs
    try:
        yield sample.contiguous(memory_format=torch.channels_last), t, context
    finally:
        unet.to(memory_format=torch.contiguous_format)


def warm_imports() -> None:
    """Import what loading a single file needs (diffusers imports much of it lazily)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401
    from diffusers.loaders import single_file  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401


def load_bare_pipeline(path: Path, device: str = "cpu", half: bool = False):
    """`StableDiffusionPipeline.from_single_file` with diffusers' defaults.

    The only extra is `config=`: the vendored config folder written from the file's
    tensors, because this machine has no model hub. (fp16 only for --cuda.)
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()

    from ..core.families import default_families
    from ..model_manager.loader import identify_file, write_config_folder

    families = default_families()
    spec = identify_file(path, families)
    family = families.of(spec)
    extra = {"dtype": torch.float16} if half else {}
    with tempfile.TemporaryDirectory(prefix="bench-config-") as folder:
        write_config_folder(family.config_files(spec), Path(folder))
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=folder, local_files_only=True, safety_checker=None,
            feature_extractor=None, **family.tokenizers(spec), **extra,
        )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device != "cpu" else pipe


def bare_txt2img(pipe, request: dict):
    """One bare diffusers call with the same prompt, size, steps, CFG, seed and sampler."""
    from diffusers import EulerDiscreteScheduler

    if getattr(pipe.scheduler.config, "timestep_spacing", None) != "linspace":
        # A1111's "Euler" (Uniform schedule) is diffusers' Euler with linspace spacing
        pipe.scheduler = EulerDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="linspace"
        )
    return pipe(
        request["prompt"],
        negative_prompt=request["negative_prompt"],
        num_inference_steps=request["steps"],
        guidance_scale=request["cfg_scale"],
        width=request["width"],
        height=request["height"],
        generator=torch.Generator("cpu").manual_seed(request["seed"]),
    ).images[0]


def summary(times: list[float]) -> dict:
    return {
        "runs": [round(t, 4) for t in times],
        "median": statistics.median(times),
        "min": min(times),
    }
