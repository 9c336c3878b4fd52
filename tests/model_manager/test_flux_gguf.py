"""GGUF FLUX transformers (city96's layout) on the tiny FLUX model (width 64, never 3072):
shapes read without weights, the weights kept quantized (Q8_0, Q4_K, Q5_K), the result
equal to the file dequantized by the gguf package, and LoRA on top."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import tiny_flux_loras as loras
from tests.tiny_flux_loras import transformer_out
from webui.core.families import FLUX1
from webui.model_manager import flux_files, flux_gguf, flux_keys
from webui.model_manager.loader import read_shapes
from webui.model_manager.tiny_flux import bfl_transformer_state, build_tiny_flux, save_gguf


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pipe = build_tiny_flux(seed=0)
    root = tmp_path_factory.mktemp("flux-gguf")
    return {
        "pipe": pipe,
        "Q8_0": save_gguf(pipe, root / "flux1-tiny-Q8_0.gguf"),
        "Q4_K": save_gguf(pipe, root / "flux1-tiny-Q4_K_S.gguf", kquant="Q4_K"),
        "Q5_K": save_gguf(pipe, root / "flux1-tiny-Q5_K_S.gguf", kquant="Q5_K"),
        "kohya": loras.write_kohya(root / "kohya.safetensors", loras.bfl_pairs(pipe.transformer)),
    }


def _transformer(path):
    shapes = read_shapes(path)
    config = flux_keys.transformer_config(shapes, flux_keys.FluxLayout.of(shapes).transformer)
    return flux_files.build_transformer(config, flux_files.read_state(path, ""), torch.float32)


def _dequantized_reference(path, config):
    """The file's tensors dequantized by the gguf package itself, as a plain model."""
    from gguf import GGUFReader, quants

    reader = GGUFReader(str(path))
    state = {
        t.name: torch.from_numpy(
            np.ascontiguousarray(quants.dequantize(t.data, t.tensor_type)).astype(np.float32)
        ).reshape(tuple(int(n) for n in reversed(t.shape.tolist())))
        for t in reader.tensors
    }
    return flux_files.build_transformer(config, state, torch.float32)


def test_shapes_are_the_logical_ones_and_identify_a_flux_transformer(files):
    shapes = read_shapes(files["Q8_0"])
    expected = {k: tuple(v.shape) for k, v in bfl_transformer_state(files["pipe"].transformer).items()}  # fmt: skip
    assert shapes == expected
    assert flux_keys.FluxLayout.of(shapes).missing() == ("vae", "clip_l", "t5xxl")


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_K", "Q5_K"])
def test_weights_stay_quantized_and_compute_what_gguf_dequantizes(files, kind):
    model = _transformer(files[kind])
    found = flux_gguf.quant_types(model)
    assert found.get("Q8_0", 0) > 10 and (kind == "Q8_0" or found[kind] >= 2), found
    reference = _dequantized_reference(files[kind], dict(model.config))
    # diffusers multiplies the blocks' fp16 scales in fp16: a rounding of about 1e-3
    out = transformer_out(model)
    torch.testing.assert_close(out, transformer_out(reference), atol=3e-3, rtol=1e-2)
    if kind == "Q8_0":  # close to the unquantized model
        full = transformer_out(files["pipe"].transformer)
        torch.testing.assert_close(out, full, atol=0.05, rtol=0.05)


def test_parameter_memory_is_the_quantized_size(files):
    model = _transformer(files["Q8_0"])
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    bf16 = sum(p.numel() * 2 for p in files["pipe"].transformer.parameters())
    assert stored < 0.6 * bf16, (stored, bf16)  # Q8_0: 34 bytes per 32 weights


def test_lora_on_a_gguf_model(files):
    pipe = build_tiny_flux(seed=0)
    pipe.transformer = _transformer(files["Q4_K"])
    assert loras.lora_change(pipe, FLUX1, files["kohya"]).abs().max() > 0.1
    assert flux_gguf.quant_types(pipe.transformer)  # still quantized under the adapters
