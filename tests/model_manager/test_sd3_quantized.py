"""SD 3.5 transformers stored narrow, through FLUX's modules: fp8 (`*_fp8_e4m3fn`) stays fp8
with per-layer casting, city96's GGUF layout (Stability's keys, architecture "sd3") stays
quantized; both compute close to the full model, load as checkpoints with their modules
(the infotext's "Weight storage" names SD 3.5's T5 and CLIP-G), and take a LoRA."""

from __future__ import annotations

import pytest
import torch

from tests import tiny_flux_loras as loras
from tests.tiny_flux_loras import sd3_transformer_out
from webui.core.families import SD3, default_families
from webui.model_manager import flux_gguf, sd3_files, sd3_keys
from webui.model_manager.loader import identify_file, load_checkpoint, read_shapes
from webui.model_manager.sniff import gguf_family
from webui.model_manager.tiny_flux import write_gguf
from webui.model_manager.tiny_sd3 import (
    build_tiny_sd3,
    save_modules,
    save_transformer,
    stability_transformer_state,
)
from webui.model_manager.weight_storage import parameter_bytes, storage, storage_fields

FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pipe = build_tiny_sd3(seed=0, medium=True)
    root = tmp_path_factory.mktemp("sd3-narrow")
    pairs = loras.stability_pairs(pipe)
    return {
        "pipe": pipe,
        "fp8": save_transformer(pipe, root / "sd3.5_medium_fp8_e4m3fn.safetensors", dtype=FP8),
        "gguf": write_gguf(
            stability_transformer_state(pipe.transformer),
            root / "sd3.5_medium-Q8_0.gguf",
            arch="sd3",
        ),  # fmt: skip
        "modules": save_modules(pipe, root / "modules", dtype=torch.float32),
        "t5_fp8": save_modules(pipe, root / "modules-fp8", dtype=FP8)["t5xxl"],
        "kohya": loras.write_kohya(root / "kohya.safetensors", pairs),
    }


def _transformer(path):
    shapes = read_shapes(path)
    prefix = sd3_keys.SD3Layout.of(shapes).transformer
    config = sd3_keys.transformer_config(shapes, prefix)
    return sd3_files.build_transformer(config, sd3_files.read_state(path, prefix), torch.float32)


@pytest.mark.parametrize("kind", ["fp8", "gguf"])
def test_the_weights_stay_narrow_and_compute_close_to_the_full_model(files, kind):
    model = _transformer(files[kind])
    full = files["pipe"].transformer
    expected = "fp8_e4m3fn" if kind == "fp8" else "GGUF Q8_0"
    assert storage(model) == expected and storage(full) is None
    assert parameter_bytes(model) < 0.45 * parameter_bytes(full)
    out, reference = sd3_transformer_out(model), sd3_transformer_out(full)
    assert out.dtype == torch.float32
    assert (out - reference).abs().max() < 0.1 * reference.abs().max()


def test_a_gguf_file_is_identified_as_sd3(files):
    assert gguf_family(files["gguf"]) == "SD 3"
    spec = identify_file(files["gguf"], default_families())
    assert (spec.family, spec.family_label) == ("sd3", "SD 3.5 Medium")


@pytest.mark.parametrize("kind", ["fp8", "gguf"])
def test_loaded_as_a_checkpoint_with_modules_and_the_weight_storage_field(files, kind):
    modules = [files["modules"][k] for k in ("vae", "clip_l", "clip_g")] + [files["t5_fp8"]]
    model = load_checkpoint(files[kind], "cpu", torch.float32, default_families(), modules)
    transformer = "fp8_e4m3fn" if kind == "fp8" else "GGUF Q8_0"
    assert storage_fields(model.pipe) == {
        "Weight storage": f"transformer {transformer}, t5xxl fp8_e4m3fn"
    }


@pytest.mark.parametrize("kind", ["fp8", "gguf"])
def test_a_kohya_lora_on_a_narrow_model(files, kind):
    pipe = build_tiny_sd3(seed=0, medium=True)
    pipe.transformer = _transformer(files[kind])
    assert loras.lora_change(pipe, SD3, files["kohya"], sd3_transformer_out).abs().max() > 0.1
    assert storage(pipe.transformer) == ("fp8_e4m3fn" if kind == "fp8" else "GGUF Q8_0")
    if kind == "gguf":
        assert flux_gguf.quant_types(pipe.transformer)
