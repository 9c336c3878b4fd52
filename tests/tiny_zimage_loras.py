"""Tiny Z-Image LoRA files for the tiny Z-Image model (`webui.model_manager.tiny_zimage`),
in the layouts users have:

- diffusers / peft: `transformer.layers.0.attention.to_q.lora_A.weight`;
- ai-toolkit: the same under `diffusion_model.`, with `.alpha`;
- kohya / musubi-tuner: `lora_unet_layers_0_attention_to_q.lora_down.weight`, `.alpha`;
- ComfyUI's names: `diffusion_model.layers.0.attention.qkv.lora_A.weight` (the fused
  projection), `attention.out`.

`pairs` makes (down, up) pairs on the diffusers layers; `merged` is the reference: the
pairs' deltas (times alpha / rank) added to a copy of the transformer's weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.tiny_flux_loras import kohya_state, write_ab

TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
           "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")  # fmt: skip


def pairs(transformer, *, rank=4, seed=3, scale=0.3) -> dict[str, tuple[torch.Tensor, ...]]:
    """A random (down, up) pair on the attention and feed-forward layers of every block."""
    gen = torch.Generator().manual_seed(seed)
    found = {}
    for name, module in transformer.named_modules():
        if name.endswith(TARGETS) and isinstance(module, torch.nn.Linear):
            found[name] = (torch.randn(rank, module.in_features, generator=gen) * scale,
                           torch.randn(module.out_features, rank, generator=gen) * scale)  # fmt: skip
    return found


def write_peft(path: Path, layer_pairs: dict) -> Path:
    return write_ab(path, layer_pairs, "transformer.")


def write_ai_toolkit(path: Path, layer_pairs: dict, alpha: float) -> Path:
    return write_ab(path, layer_pairs, "diffusion_model.", alpha)


def write_kohya(path: Path, layer_pairs: dict, alpha: float) -> Path:
    state = kohya_state(layer_pairs, alpha)
    save_file(state, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def write_comfy(path: Path, layer_pairs: dict) -> Path:
    """ComfyUI's names: q, k, v as one fused layer (their downs stacked, ups block-diagonal,
    so the file computes exactly what the separate pairs do) and `attention.out`."""
    fused = {}
    for name, (down, up) in layer_pairs.items():
        if name.endswith(("to_k", "to_v")):
            continue
        if name.endswith("to_q"):
            block = name.removesuffix("to_q")
            downs = [layer_pairs[f"{block}to_{x}"][0] for x in "qkv"]
            ups = [layer_pairs[f"{block}to_{x}"][1] for x in "qkv"]
            down, up, name = torch.cat(downs), torch.block_diag(*ups), f"{block}qkv"
        fused[name.replace("attention.to_out.0", "attention.out")] = (down, up)
    return write_ab(path, fused, "diffusion_model.")


def merged(transformer, layer_pairs: dict, *, alpha: float | None = None):
    """A copy of `transformer` with each pair's delta added to its layer's weight."""
    model = copy.deepcopy(transformer)
    layers = dict(model.named_modules())
    with torch.no_grad():
        for name, (down, up) in layer_pairs.items():
            factor = alpha / down.shape[0] if alpha is not None else 1.0
            layers[name].weight += factor * (up @ down)
    return model


@torch.no_grad()
def transformer_out(transformer) -> torch.Tensor:
    """A Z-Image transformer's output for fixed random latents (4x4) and captions."""
    gen = torch.Generator().manual_seed(0)
    x = [torch.randn(16, 1, 4, 4, generator=gen)]
    captions = [torch.randn(6, 32, generator=gen)]
    return torch.stack(transformer(x, torch.tensor([0.5]), captions, return_dict=False)[0])
