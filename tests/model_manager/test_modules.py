"""Forge's "VAE / Text Encoder" module files: names resolved only to files of the module
folders; a FLUX transformer-only checkpoint is built with them and rebuilt when they change."""

from __future__ import annotations

import shutil

import pytest

from webui.core.families import default_families
from webui.model_manager.loader import MissingModuleError
from webui.model_manager.manager import ModelManager
from webui.model_manager.memory import plan_memory
from webui.model_manager.modules import ModuleFiles, UnknownModuleError, module_kinds
from webui.model_manager.registry import CheckpointRegistry, HashCache


@pytest.fixture
def folders(tmp_path, flux_files):
    vae, text = tmp_path / "VAE", tmp_path / "text_encoder"
    (text / "flux").mkdir(parents=True)
    vae.mkdir()
    shutil.copy(flux_files["vae"], vae / "ae.safetensors")
    shutil.copy(flux_files["clip_l"], text / "clip_l.safetensors")
    shutil.copy(flux_files["t5xxl"], text / "flux" / "t5xxl_fp16.safetensors")
    ckpts = tmp_path / "Stable-diffusion"
    ckpts.mkdir()
    shutil.copy(flux_files["transformer"], ckpts / "flux1-tiny.safetensors")
    return vae, text, ckpts


def test_names_paths_and_relative_paths_resolve_inside_the_folders(folders, tmp_path):
    vae, text, _ = folders
    files = ModuleFiles([vae, text])
    assert files.names() == ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]
    paths = files.resolve(["ae.safetensors", str(text / "clip_l.safetensors"),
                           "flux/t5xxl_fp16.safetensors"])  # fmt: skip
    assert module_kinds(paths) == dict(zip(("vae", "clip_l", "t5xxl"), paths, strict=True))
    outside = tmp_path / "elsewhere.safetensors"
    shutil.copy(vae / "ae.safetensors", outside)
    with pytest.raises(UnknownModuleError, match="elsewhere.safetensors"):
        files.resolve([str(outside)])  # a path outside the module folders is never read


def test_the_manager_builds_and_rebuilds_with_the_chosen_modules(folders, tmp_path):
    vae, text, ckpts = folders
    manager = ModelManager(
        CheckpointRegistry(ckpts, HashCache(tmp_path / "cache.json")),
        plan_memory(use_cpu_all=True), families=default_families(), hashing=False,
        module_files=ModuleFiles([vae, text]),
    )  # fmt: skip
    info = manager.resolve("flux1-tiny")
    with pytest.raises(MissingModuleError, match="t5xxl_fp16.safetensors"):
        manager.needed_modules(info, ["ae.safetensors", "clip_l.safetensors"])
    assert "models/text_encoder" in manager.module_problem(info, ["ae.safetensors"])
    chosen = ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]
    modules = manager.needed_modules(info, chosen)
    first = manager.acquire(info, modules).model
    assert type(first.pipe).__name__ == "FluxPipeline" and first.modules == modules
    assert manager.acquire(info, modules).model is first  # cached with the same modules
    shutil.copy(vae / "ae.safetensors", vae / "ae-copy.safetensors")
    other = manager.needed_modules(info, ["ae-copy.safetensors", *chosen[1:]])
    assert manager.acquire(info, other).model is not first  # other modules: rebuilt


def test_distilled_guidance_is_read_from_the_header(folders, tmp_path, flux_files, tiny_files):
    _, _, ckpts = folders
    shutil.copy(flux_files["schnell"], ckpts / "flux1-schnell-tiny.safetensors")
    shutil.copy(tiny_files["sd1"], ckpts / "sd1.safetensors")
    manager = ModelManager(CheckpointRegistry(ckpts, HashCache(tmp_path / "cache.json")),
                           plan_memory(use_cpu_all=True), families=default_families(),
                           hashing=False)  # fmt: skip
    shown = {name: manager.distilled_guidance(manager.resolve(name))
             for name in ("flux1-tiny", "flux1-schnell-tiny", "sd1")}  # fmt: skip
    assert shown == {"flux1-tiny": True, "flux1-schnell-tiny": False, "sd1": False}
