"""Which CLIP vision encoder an IP-Adapter file needs (what ip-adapter-auto picks): read
off its image projection's input width, as h94's and XLabs' files have it; the name and
the family only for a file whose width is no CLIP's."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from webui.imaging.control_preprocessors import ip_adapter_module
from webui.model_manager.controlnet_files import ControlNetFile, ip_adapter_clip


@pytest.mark.parametrize(
    "name, key, width, context, clip, module",
    [
        ("ip-adapter_sd15", "image_proj.proj.weight", 1024, 768, "clip_h", "ip-adapter_clip_sd15"),
        ("ip-adapter_sd15_vit-G", "image_proj.proj.weight", 1280, 768, "clip_g",
         "ip-adapter_clip_sdxl"),
        ("ip-adapter-plus_sd15", "image_proj.proj_in.weight", 1280, 768, "clip_h",
         "ip-adapter_clip_sd15"),
        ("ip-adapter-full-face_sd15", "image_proj.proj.0.weight", 1280, 768, "clip_h",
         "ip-adapter_clip_sd15"),
        ("ip-adapter_sdxl", "image_proj.proj.weight", 1280, 2048, "clip_g", "ip-adapter_clip_sdxl"),
        ("ip-adapter_sdxl_vit-h", "image_proj.proj.weight", 1024, 2048, "clip_h",
         "ip-adapter_clip_sdxl_plus_vith"),
        ("ip-adapter-plus_sdxl_vit-h", "image_proj.proj_in.weight", 1280, 2048, "clip_h",
         "ip-adapter_clip_sdxl_plus_vith"),
        ("renamed", "image_proj.proj_in.weight", 1664, 2048, "clip_g", "ip-adapter_clip_sdxl"),
        ("flux-ip-adapter", "ip_adapter_proj_model.proj.weight", 768, 4096, "clip_l",
         "ip-adapter_clip_flux"),
    ],
)  # fmt: skip
def test_the_encoder_is_read_off_the_projection(tmp_path, name, key, width, context, clip,
                                                module):  # fmt: skip
    path = tmp_path / f"{name}.safetensors"
    save_file({key: torch.zeros(2, width, dtype=torch.uint8)}, str(path))
    found = ControlNetFile(name, path, "00000000", context, "ip-adapter")
    assert ip_adapter_clip(found) == clip
    assert ip_adapter_module(clip, found.family) == module


@pytest.mark.parametrize(
    "name, context, clip",
    [("ip-adapter_sdxl_vit-h", 2048, "clip_h"), ("ip-adapter_sdxl", 2048, "clip_g"),
     ("ip-adapter_sd15_vit-G", 768, "clip_g"), ("ip-adapter_sd15", 768, "clip_h"),
     ("flux-ip-adapter", 4096, "clip_l")],
)  # fmt: skip
def test_a_width_of_no_clip_goes_by_name_then_family(tmp_path, name, context, clip):
    path = tmp_path / f"{name}.bin"  # a pickle: its tensors are not read
    path.write_bytes(b"")
    assert ip_adapter_clip(ControlNetFile(name, path, "00000000", context, "ip-adapter")) == clip
