"""The model manager and SD 3.5 files: the flow-matching shift the UI shows is read from a
file's header or a folder's model_index.json, and a transformer-only file's modules are
chosen by their tensors (CLIP-L and CLIP-G by width) whatever their names."""

from __future__ import annotations

import shutil

import pytest

from webui.core.families import default_families
from webui.model_manager.loader import MissingModuleError
from webui.model_manager.manager import ModelManager
from webui.model_manager.memory import plan_memory
from webui.model_manager.modules import ModuleFiles
from webui.model_manager.registry import CheckpointRegistry, HashCache


@pytest.fixture
def manager(tmp_path, sd3_files, flux_files, tiny_files) -> ModelManager:
    ckpts, text = tmp_path / "Stable-diffusion", tmp_path / "text_encoder"
    ckpts.mkdir()
    text.mkdir()
    shutil.copy(sd3_files["transformer"], ckpts / "sd3.5-dit.safetensors")
    shutil.copytree(sd3_files["diffusers"], ckpts / "sd3.5-folder")
    shutil.copy(flux_files["transformer"], ckpts / "flux1-tiny.safetensors")
    shutil.copy(tiny_files["sd1"], ckpts / "sd1.safetensors")
    # names that do not say which CLIP is which: the widths do
    shutil.copy(sd3_files["clip_l"], text / "encoder-a.safetensors")
    shutil.copy(sd3_files["clip_g"], text / "encoder-b.safetensors")
    shutil.copy(sd3_files["t5xxl"], text / "t5.safetensors")
    shutil.copy(sd3_files["vae"], text / "vae.safetensors")
    return ModelManager(CheckpointRegistry(ckpts, HashCache(tmp_path / "cache.json")),
                        plan_memory(use_cpu_all=True), families=default_families(),
                        hashing=False, module_files=ModuleFiles([text]))  # fmt: skip


def test_the_flow_shift_is_read_from_headers_and_folders(manager):
    shown = {name: manager.flow_shift(manager.resolve(name))
             for name in ("sd3.5-dit", "sd3.5-folder", "flux1-tiny", "sd1")}  # fmt: skip
    # FLUX.1 dev: 0, its own shift from the image size (tests/model_manager/test_flow_shift.py)
    assert shown == {"sd3.5-dit": 3.0, "sd3.5-folder": 3.0, "flux1-tiny": 0.0, "sd1": None}


def test_modules_are_chosen_by_their_tensors_in_forges_order(manager):
    info = manager.resolve("sd3.5-dit")
    names = ["t5.safetensors", "encoder-b.safetensors", "vae.safetensors", "encoder-a.safetensors"]
    chosen = manager.needed_modules(info, names)
    assert [p.name for p in chosen] == ["vae.safetensors", "encoder-a.safetensors",
                                        "encoder-b.safetensors", "t5.safetensors"]  # fmt: skip
    with pytest.raises(MissingModuleError, match="CLIP-G"):
        manager.needed_modules(info, [n for n in names if n != "encoder-b.safetensors"])
