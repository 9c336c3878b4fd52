"""FLUX under the CPU's bf16 decision (`cpu_precision.run_denoiser_in`, the default on AMX
CPUs and `--precision bf16`): plain, fp8 and GGUF transformers run, and the fp8 and GGUF
weights stay as stored instead of being expanded (fp8) or corrupted (GGUF blocks)."""

from __future__ import annotations

import pytest
import torch

from webui.model_manager import flux_files, flux_keys
from webui.model_manager.cpu_precision import run_denoiser_in
from webui.model_manager.loader import read_shapes
from webui.model_manager.tiny_flux import build_tiny_flux, save_gguf, save_transformer
from webui.model_manager.weight_storage import storage


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux-bf16")
    pipe = build_tiny_flux(seed=0)
    return {
        "fp8": save_transformer(pipe, root / "fp8.safetensors", dtype=torch.float8_e4m3fn),
        "gguf": save_gguf(pipe, root / "q8.gguf"),
    }


@pytest.mark.parametrize("kind", ["plain", "fp8", "gguf"])
def test_flux_runs_in_bf16_and_keeps_its_storage(files, kind):
    pipe = build_tiny_flux(seed=0)
    pipe.set_progress_bar_config(disable=True)
    if kind != "plain":
        path = files[kind]
        config = flux_keys.transformer_config(read_shapes(path), "")
        state = flux_files.read_state(path, "")
        pipe.transformer = flux_files.build_transformer(config, state, torch.float32)
    stored = storage(pipe.transformer)
    assert run_denoiser_in(pipe, torch.bfloat16)
    assert storage(pipe.transformer) == stored  # fp8 stays fp8, GGUF stays GGUF
    assert pipe.transformer.dtype == torch.bfloat16
    latents = pipe("a cat", height=64, width=64, num_inference_steps=2, max_sequence_length=32,
                   generator=torch.Generator().manual_seed(0), output_type="latent").images  # fmt: skip
    assert latents.dtype == torch.float32 and latents.isfinite().all()
