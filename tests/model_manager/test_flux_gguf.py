"""GGUF FLUX transformers (city96's layout) on the tiny FLUX model (width 64, never 3072):
shapes read without weights, the weights kept quantized (Q8_0, Q4_K, Q5_K), the result
equal to the file dequantized by the gguf package, and LoRA on top."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests import tiny_flux_loras as loras
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


@torch.no_grad()
def _out(transformer) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return transformer(
        hidden_states=torch.randn(1, 16, 64, generator=gen),
        encoder_hidden_states=torch.randn(1, 5, 32, generator=gen),
        pooled_projections=torch.randn(1, 32, generator=gen), timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3),
        return_dict=False,
    )[0]  # fmt: skip


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
    torch.testing.assert_close(_out(model), _out(reference), atol=3e-3, rtol=1e-2)
    if kind == "Q8_0":  # close to the unquantized model
        torch.testing.assert_close(
            _out(model), _out(files["pipe"].transformer), atol=0.05, rtol=0.05
        )


def test_parameter_memory_is_the_quantized_size(files):
    model = _transformer(files["Q8_0"])
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    bf16 = sum(p.numel() * 2 for p in files["pipe"].transformer.parameters())
    assert stored < 0.6 * bf16, (stored, bf16)  # Q8_0: 34 bytes per 32 weights


def test_lora_on_a_gguf_model(files):
    pipe = build_tiny_flux(seed=0)
    pipe.transformer = _transformer(files["Q4_K"])
    base = _out(pipe.transformer)
    FLUX1.load_lora(pipe, load_file(str(files["kohya"])), "kohya")
    pipe.set_adapters(["kohya"], [1.0])
    assert (_out(pipe.transformer) - base).abs().max() > 0.1
    assert flux_gguf.quant_types(pipe.transformer)  # still quantized under the adapters
    pipe.set_adapters(["kohya"], [0.0])
    assert torch.equal(_out(pipe.transformer), base)
    pipe.disable_lora()
    assert torch.equal(_out(pipe.transformer), base)
