"""fp8 (`float8_e4m3fn`) FLUX transformer and T5-XXL files on the tiny FLUX model: the
weights stay fp8 in memory (parameter bytes measured), each layer computes in the compute
dtype, the output stays close to the full-precision model's, and LoRA works on top."""

from __future__ import annotations

import pytest
import torch

from tests import tiny_flux_loras as loras
from tests.tiny_flux_loras import transformer_out
from webui.core.families import FLUX1
from webui.model_manager import flux_files, flux_keys
from webui.model_manager.loader import read_shapes
from webui.model_manager.tiny_flux import build_tiny_flux, save_modules, save_transformer
from webui.model_manager.weight_storage import parameter_bytes, storage, storage_fields

FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pipe = build_tiny_flux(seed=0)
    root = tmp_path_factory.mktemp("flux-fp8")
    return {
        "pipe": pipe,
        "transformer": save_transformer(pipe, root / "flux1-tiny-fp8.safetensors", dtype=FP8),
        "t5xxl": save_modules(pipe, root / "modules", dtype=FP8)["t5xxl"],
        "kohya": loras.write_kohya(root / "kohya.safetensors", loras.bfl_pairs(pipe.transformer)),
    }


def _transformer(path):
    config = flux_keys.transformer_config(read_shapes(path), "")
    return flux_files.build_transformer(config, flux_files.read_state(path, ""), torch.float32)


def test_the_transformer_stays_fp8_and_computes_in_the_compute_dtype(files):
    model = _transformer(files["transformer"])
    full = files["pipe"].transformer
    linear = model.transformer_blocks[0].attn.to_q
    assert linear.weight.dtype == FP8 and model.dtype == torch.float32
    assert storage(model) == "fp8_e4m3fn" and storage(full) is None
    # fp32 4 bytes a weight, fp8 1: the norms' scales are all that is kept wide
    assert parameter_bytes(model) < 0.3 * parameter_bytes(full)
    out, reference = transformer_out(model), transformer_out(full)
    assert out.dtype == torch.float32
    assert (out - reference).abs().max() < 0.1 * reference.abs().max()
    assert linear.weight.dtype == FP8  # cast back after the call


def test_t5xxl_fp8_stays_fp8(files):
    path = files["t5xxl"]
    t5 = flux_files.build_t5(flux_keys.t5_config(read_shapes(path), ""),
                             flux_files.read_state(path, ""), torch.float32)  # fmt: skip
    full = files["pipe"].text_encoder_2
    assert storage(t5) == "fp8_e4m3fn" and t5.shared.weight.dtype == FP8
    assert parameter_bytes(t5) < 0.4 * parameter_bytes(full)
    ids = torch.tensor([[3, 9, 1131, 123, 346, 1]])
    with torch.no_grad():
        out, reference = t5(ids)[0], full(ids)[0]
    assert out.dtype == torch.float32
    assert (out - reference).abs().max() < 0.15 * reference.abs().max()


def test_lora_on_an_fp8_model_and_the_infotext_field(files):
    pipe = build_tiny_flux(seed=0)
    pipe.transformer = _transformer(files["transformer"])
    assert storage_fields(pipe) == {"Weight storage": "transformer fp8_e4m3fn"}
    change = loras.lora_change(pipe, FLUX1, files["kohya"])
    assert change.isfinite().all() and change.abs().max() > 0.1
    to_q = pipe.transformer.transformer_blocks[0].attn.to_q
    assert to_q.base_layer.weight.dtype == FP8  # the LoRA's own layers keep the file's values
    assert to_q.lora_A["kohya"].weight.dtype == torch.float32
