"""A tiny random T2I style adapter in TencentARC's key layout (`t2iadapter_style_sd14v1.pth`:
`style_embedding`, `ln_pre`, `transformer_layes.N.attn.in_proj_weight`, ..., `ln_post`,
`proj`), its widths fitting tests/tiny_clip_vision.py (64) and the tiny SD 1.x UNet's
prompt width (32). The keys are written out here, not taken from our module, so a
loader that reads other names fails the tests. Built at test time, a few hundred kB."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_clip_vision import WIDTH

CONTEXT, LAYERS, TOKENS = 32, 2, 8  # the tiny SD 1.x text width; the published: 768, 3, 8


def tiny_style_state(seed: int = 0, width: int = WIDTH, context: int = CONTEXT) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    state = {"style_embedding": rand(1, TOKENS, width, scale=width**-0.5),
             "proj": rand(width, context, scale=width**-0.5)}  # fmt: skip
    for norm in ("ln_pre", "ln_post"):
        state[f"{norm}.weight"], state[f"{norm}.bias"] = 1 + rand(width), rand(width)
    for i in range(LAYERS):
        p = f"transformer_layes.{i}."
        state |= {p + "attn.in_proj_weight": rand(3 * width, width),
                  p + "attn.in_proj_bias": rand(3 * width),
                  p + "attn.out_proj.weight": rand(width, width),
                  p + "attn.out_proj.bias": rand(width),
                  p + "mlp.c_fc.weight": rand(4 * width, width),
                  p + "mlp.c_fc.bias": rand(4 * width),
                  p + "mlp.c_proj.weight": rand(width, 4 * width),
                  p + "mlp.c_proj.bias": rand(width)}  # fmt: skip
        for norm in ("ln_1", "ln_2"):
            state[f"{p}{norm}.weight"], state[f"{p}{norm}.bias"] = 1 + rand(width), rand(width)
    return state


def save_tiny_style_adapter(path: Path, seed: int = 0) -> Path:
    """The tiny adapter as a pickled state dict (`.pth`) or `.safetensors`, by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = tiny_style_state(seed)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
