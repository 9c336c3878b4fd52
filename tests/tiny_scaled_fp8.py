"""ComfyUI's "fp8_scaled" files written from a tiny model's full-precision file: each linear
layer's weight divided by its scale and stored in float8_e4m3fn, the scale as
`<layer>.scale_weight` (one value, or one per output row), a `scale_input` of 1, and the
marker tensor `scaled_fp8`; every other tensor in bf16, as ComfyUI writes them."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
# embeddings keep their dtype (ComfyUI scales linear layers; T5's relative attention bias,
# an embedding too, is scaled here to try that path)
EMBEDDINGS = ("shared.weight", "embed_tokens.weight", "token_embedding.weight",
              "position_embedding.weight")  # fmt: skip


def write_scaled(source: Path, target: Path, per_row: bool = False) -> Path:
    """`source` (a file of fp32/fp16 tensors) as a scaled-fp8 file at `target`."""
    out = {"scaled_fp8": torch.empty(0, dtype=FP8)}
    for key, value in load_file(str(source)).items():
        if key.endswith(".weight") and value.dim() == 2 and not key.endswith(EMBEDDINGS):
            value = value.float()
            if per_row:
                scale = value.abs().amax(dim=1).clamp(min=1e-12) / FP8_MAX
                weight = (value / scale[:, None]).to(FP8)
            else:
                scale = value.abs().max().clamp(min=1e-12) / FP8_MAX
                weight = (value / scale).to(FP8)
            layer = key.removesuffix(".weight")
            out[key] = weight
            out[f"{layer}.scale_weight"] = scale.to(torch.float32)
            out[f"{layer}.scale_input"] = torch.ones((), dtype=torch.float32)
        else:
            out[key] = value.to(torch.bfloat16) if value.is_floating_point() else value
    save_file(out, str(target))
    return target
