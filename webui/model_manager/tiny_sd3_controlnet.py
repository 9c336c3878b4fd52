"""Tiny random SD 3.5 ControlNets for tests, in the layouts users have (`sd3_controlnet`).

`build_tiny_sd3_controlnet` makes a diffusers `SD3ControlNetModel` of the tiny SD 3.5's
sizes (`tiny_sd3`: width 64, 2 heads of 32, text width 128, pooled width 96, position
embedding of 32 patches a side), every weight random (the zero-initialised output layers
too, so a unit changes the image): InstantX's architecture (its own position and text
embedders, 1 joint block) or, `stability=True`, Stability's (single-stream blocks, the
transformer's position embedding, no text). `save_tiny_sd3_controlnet` writes it as a
diffusers single file, a diffusers folder, or in Stability's key names.

This module must never touch the network or import a UI library.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tiny_flux_controlnet import write_model
from .tiny_sd3 import CLIP_G_WIDTH, CLIP_L_WIDTH, HEAD_DIM, HEADS, T5_WIDTH

_TO_STABILITY = {"attn.to_out.0.": "attn.proj.", "ff.net.0.proj.": "mlp.fc1.",
                 "ff.net.2.": "mlp.fc2.", "norm1.linear.": "adaLN_modulation.1."}  # fmt: skip


@torch.no_grad()
def build_tiny_sd3_controlnet(seed: int = 0, stability: bool = False, layers: int = 1):
    from diffusers import SD3ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SD3ControlNetModel(
            sample_size=32, patch_size=2, in_channels=16, out_channels=16, num_layers=layers,
            attention_head_dim=HEAD_DIM, num_attention_heads=HEADS,
            joint_attention_dim=None if stability else T5_WIDTH,
            caption_projection_dim=HEAD_DIM * HEADS,
            pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
            pos_embed_max_size=None if stability else 32,
            pos_embed_type=None if stability else "sincos", use_pos_embed=not stability,
            force_zeros_for_pooled_projection=not stability,
        )  # fmt: skip
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
        for module in (*model.controlnet_blocks, model.pos_embed_input):
            for param in module.parameters():
                param.copy_(torch.randn_like(param) * 0.5 / param[0].numel() ** 0.5)
    return model.eval()


def stability_keys(model) -> dict[str, torch.Tensor]:
    """A Stability-architecture `SD3ControlNetModel` in Stability's key names (the inverse
    of `sd3_controlnet.stability_state`)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".attn.to_k." in key or ".attn.to_v." in key:
            continue
        if ".attn.to_q." in key:
            parts = [state[key.replace("to_q", name)] for name in ("to_q", "to_k", "to_v")]
            out[key.replace("attn.to_q.", "attn.qkv.")] = torch.cat(parts)
            continue
        for new, old in _TO_STABILITY.items():
            key = key.replace(f".{new}", f".{old}")
        out[key] = value
    return out


def save_tiny_sd3_controlnet(path: str | Path, seed: int = 0, layout: str = "diffusers") -> Path:
    """layout: "diffusers" (one file), "folder" (a diffusers folder at `path`) or
    "stability" (Stability's architecture and names, one file)."""
    model = build_tiny_sd3_controlnet(seed, stability=layout == "stability")
    return write_model(model, Path(path), layout, stability_keys if layout == "stability" else None)
