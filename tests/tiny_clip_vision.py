"""A tiny CLIP vision model (CLIPVisionModelWithProjection) in both layouts users have in
models/clip_vision: a transformers folder and one `.safetensors` file with the same keys
(as `clip_vision_g.safetensors`). Built at test time, a few hundred kB."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

WIDTH, LAYERS, PATCH, SIDE, PROJECTION = 64, 2, 8, 32, 16


def tiny_clip_vision(seed: int = 0):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=96, num_hidden_layers=LAYERS,
                              num_attention_heads=1, image_size=SIDE, patch_size=PATCH,
                              projection_dim=PROJECTION, hidden_act="gelu")  # fmt: skip
    return CLIPVisionModelWithProjection(config).eval()


def save_tiny_clip_vision(folder: Path, seed: int = 0) -> dict[str, Path]:
    """{"folder": a save_pretrained folder, "file": the same weights as one file}."""
    model = tiny_clip_vision(seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder / "tiny-vit")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "tiny_clip_vision.safetensors")
    return {"folder": folder / "tiny-vit", "file": folder / "tiny_clip_vision.safetensors"}
