"""ControlNet Union files (xinsir's layout as one file, a diffusers folder) are recognised by
their keys, listed under the control types they have a mode for, and load as diffusers'
`ControlNetUnionModel` with their own weights; a unit's mode maps as the extension's."""

from __future__ import annotations

import pytest
import torch

from webui.core.controlnet_union import mode_index, mode_of_type, serves, unit_mode
from webui.model_manager.controlnet_files import list_controlnets
from webui.model_manager.controlnet_loader import load_controlnet
from webui.model_manager.tiny import build_tiny_pipeline
from webui.model_manager.tiny_controlnet import save_tiny_controlnet
from webui.services.controlnet import model_choices


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("union")
    save_tiny_controlnet(root / "controlnet-union-promax.safetensors", "sdxl", seed=1,
                         layout="diffusers", union_modes=8)  # fmt: skip
    save_tiny_controlnet(root / "controlnet-union-sdxl-1.0", "sdxl", seed=2, layout="folder",
                         union_modes=6)  # fmt: skip
    save_tiny_controlnet(root / "control_tiny_canny.safetensors", "sdxl", seed=3,
                         layout="diffusers")  # fmt: skip
    return root


@pytest.fixture(scope="module")
def unet_config() -> dict:
    return dict(build_tiny_pipeline("sdxl", 0).unet.config)


def test_the_extensions_mode_map():
    assert [mode_of_type(t) for t in ("Canny", "Lineart", "MLSD", "Scribble", "SoftEdge",
                                      "Tile", "Inpaint", "OpenPose", "Depth", "NormalMap",
                                      "Segmentation", "Shuffle", "All")] == [
        "Hard Edge", "Hard Edge", "Hard Edge", "Soft Edge", "Soft Edge", "Tile", "Inpaint",
        "OpenPose", "Depth", "Normal Map", "Segmentation", "Unknown", "Unknown"]  # fmt: skip
    assert unit_mode("Unknown", ("Canny", "Lineart")) == "Hard Edge"
    assert unit_mode("Depth", ("Canny",)) == "Depth"  # the unit's own mode first
    assert mode_index("Hard Edge", 6, 0, "m", "canny") == 3
    assert mode_index("Inpaint", 8, 0, "m", "inpaint_only") == 7
    with pytest.raises(ValueError, match="has no Tile mode"):
        mode_index("Tile", 6, 0, "m", "tile_resample")
    with pytest.raises(ValueError, match="choose a control type"):
        mode_index("Unknown", 8, 1, "m", "none")
    assert serves("Canny", 6) and not serves("Tile", 6) and serves("Tile", 8)


def test_union_files_are_listed_under_the_types_they_serve(folder):
    files = {f.name: f for f in list_controlnets(folder).values()}
    assert files["controlnet-union-promax"].union_modes == 8
    assert files["controlnet-union-sdxl-1.0"].union_modes == 6
    assert files["control_tiny_canny"].union_modes == 0

    def names(control_type: str) -> set[str]:
        return {c.split(" [")[0] for c in model_choices(folder, control_type, "SDXL")[1:]}

    both = {"controlnet-union-promax", "controlnet-union-sdxl-1.0"}
    assert names("Canny") == both | {"control_tiny_canny"}
    assert names("Lineart") == names("Scribble") == both
    assert names("Tile") == names("Inpaint") == {"controlnet-union-promax"}
    assert names("Shuffle") == names("IP-Adapter") == set()


@pytest.mark.parametrize(("name", "modes"), [
    ("controlnet-union-promax.safetensors", 8), ("controlnet-union-sdxl-1.0", 6)])  # fmt: skip
def test_union_files_load_as_controlnet_union_models(folder, unet_config, name, modes):
    from diffusers import ControlNetUnionModel
    from safetensors.torch import load_file

    path = folder / name
    model = load_controlnet(path, unet_config)
    assert isinstance(model, ControlNetUnionModel) and model.config.num_control_type == modes
    saved = load_file(str(path / "diffusion_pytorch_model.safetensors" if path.is_dir() else path))
    loaded = model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_xinsirs_folder_config_names_the_class_controlnetmodel(folder, tmp_path, unet_config):
    """xinsir's own config.json says `ControlNetModel` with `num_control_type`."""
    import json
    import shutil

    from diffusers import ControlNetUnionModel

    copy = tmp_path / "controlnet-union-sdxl-1.0"
    shutil.copytree(folder / "controlnet-union-sdxl-1.0", copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "_class_name": "ControlNetModel"}))
    (listed,) = list_controlnets(tmp_path).values()
    assert listed.union_modes == 6
    assert isinstance(load_controlnet(copy, unet_config), ControlNetUnionModel)
