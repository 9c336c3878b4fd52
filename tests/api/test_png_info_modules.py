"""POST /sdapi/v1/png-info (its mapping): Forge's "VAE/TE" list from `Module N` fields."""

from __future__ import annotations

import base64
import io

from PIL import Image

from webui.api.mapping import png_info
from webui.imaging.infotext import pnginfo_for

TEXT = (
    "a cat\nSteps: 20, Sampler: Euler, CFG scale: 1, Seed: 1, Size: 64x64, Model: flux1-tiny, "
    "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp8_e4m3fn"
)
SERVER = ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]


def _png(text: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=pnginfo_for(text))
    return base64.b64encode(buffer.getvalue()).decode()


def test_png_info_shows_forges_vae_te_list():
    parameters = png_info(_png(TEXT), SERVER)["parameters"]
    assert parameters["VAE/TE"] == ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn"]
    assert parameters["Module 3"] == "t5xxl_fp8_e4m3fn"  # the fields themselves stay
    assert "VAE/TE" not in png_info(_png("a\nSteps: 2, Seed: 1, Size: 8x8"), SERVER)["parameters"]
