"""T2I-Adapter files in the layouts users have load as the same diffusers `T2IAdapter`
(webui/model_manager/t2i_adapter.py): SDXL's diffusers single file (pixel unshuffle 16),
TencentARC's light (color) adapter (the style adapter: test_t2i_style.py)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from webui.model_manager.controlnet_files import list_controlnets
from webui.model_manager.t2i_adapter import load_t2i_adapter


def _random(config: dict):
    from diffusers import T2IAdapter

    torch.manual_seed(0)
    return T2IAdapter(**config).eval()


def _same(a, b, side: int) -> bool:
    x = torch.rand(1, a.config.in_channels, side, side)
    with torch.no_grad():
        return all(torch.equal(u, v) for u, v in zip(a(x), b(x), strict=True))


def test_an_sdxl_diffusers_file_is_a_full_xl_adapter(tmp_path):
    config = {"in_channels": 3, "channels": [32, 64, 64, 64], "num_res_blocks": 1,
              "downscale_factor": 16, "adapter_type": "full_adapter_xl"}  # fmt: skip
    model = _random(config)
    path = tmp_path / "t2i-adapter_diffusers_xl_canny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_t2i_adapter(path)
    assert loaded.config.adapter_type == "full_adapter_xl"
    assert loaded.config.downscale_factor == 16 and list(loaded.config.channels) == [32, 64, 64, 64]
    assert _same(model, loaded, 64)
    listed = list(list_controlnets(tmp_path).values())
    assert [f.kind for f in listed] == ["t2i-adapter"]


def test_tencentarcs_light_color_adapter(tmp_path):
    config = {"in_channels": 3, "channels": [32, 64, 64], "num_res_blocks": 2,
              "downscale_factor": 8, "adapter_type": "light_adapter"}  # fmt: skip
    model = _random(config)
    original = {k.removeprefix("adapter.").replace(".resnets.", ".body."): v.contiguous()
                for k, v in model.state_dict().items()}  # fmt: skip
    path = tmp_path / "t2iadapter_color_sd14v1.pth"
    torch.save(original, path)
    loaded = load_t2i_adapter(path)
    assert loaded.config.adapter_type == "light_adapter"
    assert _same(model, loaded, 64)


def test_a_diffusers_folder_is_listed_and_loaded(tmp_path):
    from webui.model_manager.controlnet_loader import file_kind, load_control_model

    config = {"in_channels": 1, "channels": [32, 64], "num_res_blocks": 1,
              "downscale_factor": 8, "adapter_type": "full_adapter"}  # fmt: skip
    model = _random(config)
    folder = tmp_path / "t2i-adapter_sketch_folder"
    model.save_pretrained(folder)
    (listed,) = list_controlnets(tmp_path).values()
    assert (listed.name, listed.kind, listed.path) == (folder.name, "t2i-adapter", folder)
    assert file_kind(folder) == "t2i-adapter"
    assert _same(model, load_control_model(folder, {}), 64)
