"""identify -> load, offline, for every family and file format users have."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.core.families import default_families
from webui.model_manager import registry as registry_module
from webui.model_manager.identify import UnsupportedModelError, identify
from webui.model_manager.loader import (
    CheckpointLoadError,
    identify_file,
    load_checkpoint,
    read_shapes,
)
from webui.model_manager.registry import CheckpointRegistry, HashCache
from webui.model_manager.tiny import build_tiny_pipeline

FAMILIES = default_families()
EXPECTED = {
    "sd1": ("sd1", False, "StableDiffusionPipeline"),
    "sd1-inpaint": ("sd1", True, "StableDiffusionInpaintPipeline"),
    "sd2": ("sd2", False, "StableDiffusionPipeline"),
    "sdxl": ("sdxl", False, "StableDiffusionXLPipeline"),
}
UNET_KEYS = [
    "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
    "up_block_types", "cross_attention_dim", "use_linear_projection", "attention_head_dim",
    "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
]  # fmt: skip


@pytest.mark.parametrize("family", list(EXPECTED))
def test_identify_from_tensors_not_name(family, tiny_files, tmp_path):
    # a misleading file name must not matter
    path = tmp_path / "sdxl-inpainting-v2-768.safetensors"
    shutil.copy(tiny_files[family], path)
    spec = identify_file(path, FAMILIES)
    expected_family, inpainting, pipeline_class = EXPECTED[family]
    assert (spec.family, spec.inpainting, spec.pipeline_class) == (
        expected_family,
        inpainting,
        pipeline_class,
    )
    original = build_tiny_pipeline(family, seed=0)
    for key in UNET_KEYS:
        want = original.unet.config.get(key)
        got = spec.unet.get(key)
        if isinstance(want, tuple | list):
            want, got = (
                list(want),
                list(got) if isinstance(got, tuple | list) else [got] * len(want),
            )
        if key in (
            "addition_embed_type",
            "addition_time_embed_dim",
            "projection_class_embeddings_input_dim",
        ):
            if want is None:
                continue
        assert got == want, key
    assert spec.vae["scaling_factor"] == original.vae.config.scaling_factor
    assert list(spec.vae["block_out_channels"]) == list(original.vae.config.block_out_channels)
    assert (
        spec.text_encoders[0]["num_attention_heads"]
        == original.text_encoder.config.num_attention_heads
    )


@pytest.mark.parametrize("family", list(EXPECTED))
def test_loaded_model_generates_like_the_original(family, tiny_files):
    """Our offline loader (derived configs, vendored tokenizer) reproduces the original model."""
    loaded = load_checkpoint(tiny_files[family], "cpu", torch.float32, FAMILIES)
    original = build_tiny_pipeline(family, seed=0)
    assert type(loaded.pipe).__name__ == EXPECTED[family][2]
    kwargs = dict(
        prompt="a photo of a cat", num_inference_steps=2, height=64, width=64, output_type="np"
    )
    if EXPECTED[family][1]:
        from PIL import Image

        kwargs |= dict(image=Image.new("RGB", (64, 64)), mask_image=Image.new("L", (64, 64), 255))
    original.scheduler = loaded.pipe.scheduler
    a = loaded.pipe(**kwargs, generator=torch.Generator().manual_seed(1)).images
    b = original(**kwargs, generator=torch.Generator().manual_seed(1)).images
    assert abs(a - b).max() < 1e-5


def test_diffusers_folder_loads(tiny_files):
    loaded = load_checkpoint(tiny_files["sd1-diffusers"], "cpu", torch.float32, FAMILIES)
    assert loaded.spec.family == "sd1"
    assert type(loaded.pipe).__name__ == "StableDiffusionPipeline"


def test_sd2_prediction_type_is_left_to_the_unet_test(tiny_files):
    # SD 2.x files do not say whether they predict noise or v: identify leaves it open and
    # the loader settles it with A1111's UNet test; an explicit v_pred key decides at once
    shapes = read_shapes(tiny_files["sd2"])
    assert identify(shapes, FAMILIES).prediction_type is None
    assert identify({**shapes, "v_pred": ()}, FAMILIES).prediction_type == "v_prediction"
    loaded = load_checkpoint(tiny_files["sd2"], "cpu", torch.float32, FAMILIES)
    assert loaded.spec.prediction_type in ("epsilon", "v_prediction")
    assert loaded.pipe.scheduler.config.prediction_type == loaded.spec.prediction_type


def test_not_a_checkpoint_is_refused_with_the_file_name(tmp_path):
    path = tmp_path / "lora-like.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointLoadError, match="lora-like.safetensors"):
        identify_file(path, FAMILIES)
    with pytest.raises(UnsupportedModelError):
        identify({"x": (1,)}, FAMILIES)


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"garbage" * 1000])
def test_broken_files_give_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointLoadError, match="broken.safetensors"):
        identify_file(path, FAMILIES)


def test_truncated_checkpoint(tmp_path, tiny_files):
    data = tiny_files["sd1"].read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointLoadError, match="half.safetensors"):
        load_checkpoint(path, "cpu", torch.float32, FAMILIES)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_ckpt_with_code_is_refused_and_tensor_only_ckpt_loads(tmp_path, tiny_files):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "x": _Evil(str(marker))}, evil)
    with pytest.raises(CheckpointLoadError, match="evil.ckpt"):
        identify_file(evil, FAMILIES)
    assert not marker.exists()

    from safetensors.torch import load_file

    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": load_file(str(tiny_files["sd1"]))}, plain)
    assert identify_file(plain, FAMILIES).family == "sd1"
    loaded = load_checkpoint(plain, "cpu", torch.float32, FAMILIES)
    assert type(loaded.pipe).__name__ == "StableDiffusionPipeline"


def test_registry_scan_names_and_hash_cache(tmp_path, tiny_files, monkeypatch):
    folder = tmp_path / "Stable-diffusion"
    (folder / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], folder / "a.safetensors")
    shutil.copy(tiny_files["sd1"], folder / "sub" / "deeper" / "b.safetensors")
    shutil.copytree(tiny_files["sd1-diffusers"], folder / "sub" / "diffusers-model")
    (folder / "notes.txt").write_text("not a model")
    (folder / "c.partial.safetensors").write_bytes(b"")

    calls = []
    real = registry_module._sha256_of
    monkeypatch.setattr(registry_module, "_sha256_of", lambda p: calls.append(p) or real(p))
    reg = CheckpointRegistry(folder, HashCache(tmp_path / "cache.json"))
    assert [i.rel for i in reg.list()] == [
        "a.safetensors",
        "sub/deeper/b.safetensors",
        "sub/diffusers-model",
    ]
    info = reg.find("a")
    assert info.title == "a.safetensors"
    digest = reg.ensure_hash(info)
    assert len(calls) == 1 and info.title == f"a.safetensors [{digest[:10]}]"
    # a new registry (a restart) reads the hash from cache.json instead of hashing again
    reg2 = CheckpointRegistry(folder, HashCache(tmp_path / "cache.json"))
    again = reg2.find(digest[:10])
    assert again is not None and again.sha256 == digest and len(calls) == 1
    assert reg2.find(f"a.safetensors [{digest[:10]}]").rel == "a.safetensors"
    assert reg2.find("b").rel == "sub/deeper/b.safetensors"
    assert reg2.find("missing") is None


def test_pipeline_variants_share_the_loaded_weights(tiny_files):
    from webui.model_manager.manager import Lease
    from webui.model_manager.registry import CheckpointInfo

    loaded = load_checkpoint(tiny_files["sd1"], "cpu", torch.float32, FAMILIES)
    lease = Lease(loaded, CheckpointInfo(tiny_files["sd1"], "tiny-sd1.safetensors", False))
    img2img = lease.variant("StableDiffusionImg2ImgPipeline")
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert img2img.unet is loaded.pipe.unet and img2img.vae is loaded.pipe.vae
    assert lease.variant("StableDiffusionImg2ImgPipeline") is img2img  # made once
    assert lease.variant("StableDiffusionPipeline") is loaded.pipe
