"""Tiny LoRA files on the big text encoders (T5-XXL, Qwen3) of the tiny FLUX, SD 3.5 and
Z-Image models, in kohya's flattened names (`lora_te2_encoder_block_0_layer_0_SelfAttention_q`,
with `.alpha`) or peft's dotted ones (`text_encoder_2.encoder.block.0....lora_A.weight`),
on every linear layer of the encoder's first block."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

FIRST_BLOCK = ("block.0.", "layers.0.")


def encoder_state(encoder, prefix: str, *, kohya: bool, model_prefix: str = "",
                  seed: int = 5, scale: float = 0.5) -> dict[str, torch.Tensor]:  # fmt: skip
    """(down, up[, alpha]) on each linear layer of `encoder`'s first block, named with
    `prefix` (`model_prefix` before the layer name: Qwen3's "model." of a causal LM)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in encoder.named_modules():
        if not isinstance(module, torch.nn.Linear) or not any(b in name for b in FIRST_BLOCK):
            continue
        name = model_prefix + name
        down = torch.randn(4, module.in_features, generator=gen) * scale
        up = torch.randn(module.out_features, 4, generator=gen) * scale
        if kohya:
            key = prefix + name.replace(".", "_")
            state |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                      f"{key}.alpha": torch.tensor(2.0)}  # fmt: skip
        else:
            state |= {f"{prefix}{name}.lora_A.weight": down, f"{prefix}{name}.lora_B.weight": up}
    return state


def write(path: Path, *states: dict) -> Path:
    merged = {}
    for state in states:
        merged.update(state)
    save_file({k: v.contiguous() for k, v in merged.items()}, str(path))
    return path
