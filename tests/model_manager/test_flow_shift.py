"""The "Shift" slider's default, read from headers by the model manager: FLUX.1 dev 0 (its
own shift from the image size), schnell 1, Z-Image 3; None for SD 1.x (no shift)."""

from __future__ import annotations

import shutil

from webui.core.families import default_families
from webui.model_manager.manager import ModelManager
from webui.model_manager.memory import plan_memory
from webui.model_manager.registry import CheckpointRegistry, HashCache


def test_the_default_shift_of_each_flow_matching_family(tmp_path, flux_files, zimage_files,
                                                        tiny_files):  # fmt: skip
    ckpts = tmp_path / "Stable-diffusion"
    ckpts.mkdir()
    files = {"flux1-dev": flux_files["transformer"], "flux1-schnell": flux_files["schnell"],
             "flux1-folder": flux_files["diffusers"], "z-image": zimage_files["transformer"],
             "sd1": tiny_files["sd1"]}  # fmt: skip
    for name, path in files.items():
        if path.is_dir():
            shutil.copytree(path, ckpts / name)
        else:
            shutil.copy(path, ckpts / f"{name}.safetensors")
    manager = ModelManager(CheckpointRegistry(ckpts, HashCache(tmp_path / "cache.json")),
                           plan_memory(use_cpu_all=True), families=default_families(),
                           hashing=False)  # fmt: skip
    shown = {name: manager.flow_shift(manager.resolve(name)) for name in files}
    assert shown == {"flux1-dev": 0.0, "flux1-schnell": 1.0, "flux1-folder": 0.0,
                     "z-image": 3.0, "sd1": None}  # fmt: skip
