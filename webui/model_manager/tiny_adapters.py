"""Tiny random IP-Adapters and T2I-Adapters for tests, in the file layouts users have.

`save_tiny_ip_adapter` builds diffusers' image projection (`ImageProjection`, or
`IPAdapterPlusImageProjection` for a "plus" adapter) for a CLIP vision model of the given
sizes and a `to_k_ip` / `to_v_ip` pair per cross-attention layer of a tiny pipeline's
UNet, and writes them in the original IP-Adapter layout (`image_proj.*`, with the
Resampler's original names, and `ip_adapter.{1,3,5,...}.to_k_ip.weight`), the layout of
`ip-adapter_sd15.safetensors`. `save_tiny_t2i_adapter` builds diffusers' `T2IAdapter` with
the tiny UNet's channels and writes it in TencentARC's layout (`t2iadapter_*_sd15v2.pth`:
`conv_in.*`, `body.N.block1/2.*`, `body.N.in_conv.*`) or diffusers' (`adapter.*`).

This module must never import a UI library.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .tiny import build_tiny_pipeline

StateDict = dict[str, torch.Tensor]


def _plus_to_original(state: StateDict) -> StateDict:
    """IPAdapterPlusImageProjection names -> the original Resampler's (`layers.i.0.to_kv`)."""
    out: StateDict = {}
    for key, value in state.items():
        m = re.match(r"layers\.(\d+)\.(.+)", key)
        if not m:
            out[key] = value
            continue
        i, rest = m[1], m[2]
        names = {"ln0.": "0.norm1.", "ln1.": "0.norm2.", "attn.to_q.": "0.to_q.",
                 "attn.to_out.0.": "0.to_out.", "ff.0.": "1.0.", "ff.1.net.0.proj.": "1.1.",
                 "ff.1.net.2.": "1.3."}  # fmt: skip
        for new, old in names.items():
            if rest.startswith(new):
                out[f"layers.{i}.{old}{rest[len(new) :]}"] = value
        if rest.startswith("attn.to_k."):
            out[f"layers.{i}.0.to_kv.weight"] = torch.cat(
                [value, state[f"layers.{i}.attn.to_v.weight"]]
            )
    return out


@torch.no_grad()
def build_tiny_ip_adapter(family: str = "sd1", *, clip_projection: int = 16,
                          clip_width: int = 64, plus: bool = False, seed: int = 0) -> StateDict:  # fmt: skip
    """The original-layout state dict of a random IP-Adapter for the tiny UNet."""
    from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection

    unet = build_tiny_pipeline(family, seed).unet
    cross = unet.config.cross_attention_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 7)
        if plus:
            proj = IPAdapterPlusImageProjection(embed_dims=clip_width, output_dims=cross,
                                                hidden_dims=64, depth=4, dim_head=64, heads=1,
                                                num_queries=4)  # fmt: skip
            image_proj = _plus_to_original(proj.state_dict())
        else:
            proj = ImageProjection(cross_attention_dim=cross, image_embed_dim=clip_projection,
                                   num_image_text_embeds=4)  # fmt: skip
            image_proj = {
                k.replace("image_embeds", "proj"): v for k, v in proj.state_dict().items()
            }
        state = {f"image_proj.{k}": v for k, v in image_proj.items()}
        names = [n for n in unet.attn_processors if not n.endswith("attn1.processor")]
        for k, name in enumerate(names):
            attn = unet.get_submodule(name.removesuffix(".processor"))
            hidden = attn.to_k.out_features
            for part in ("to_k_ip", "to_v_ip"):
                weight = torch.randn(hidden, cross) / cross**0.5
                state[f"ip_adapter.{2 * k + 1}.{part}.weight"] = weight
    return {k: v.contiguous() for k, v in state.items()}


def save_tiny_ip_adapter(path: str | Path, family: str = "sd1", **kwargs) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(build_tiny_ip_adapter(family, **kwargs), str(path))
    return path


@torch.no_grad()
def build_tiny_t2i_adapter(family: str = "sd1", *, in_channels: int = 1, seed: int = 0):
    """A random diffusers `T2IAdapter` whose features fit the tiny UNet's down blocks."""
    from diffusers import T2IAdapter

    unet = build_tiny_pipeline(family, seed).unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 11)
        model = T2IAdapter(in_channels=in_channels, channels=list(unet.config.block_out_channels),
                           num_res_blocks=2, downscale_factor=8, adapter_type="full_adapter")  # fmt: skip
    return model.eval()


def t2i_adapter_to_original(state: StateDict, num_res_blocks: int) -> StateDict:
    """diffusers' full `T2IAdapter` names -> TencentARC's (`body.N.block1`, `conv_in`)."""
    out: StateDict = {}
    for key, value in state.items():
        key = key.removeprefix("adapter.")
        if m := re.match(r"body\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            key = f"body.{int(m[1]) * num_res_blocks + int(m[2])}.{m[3]}"
        elif m := re.match(r"body\.(\d+)\.in_conv\.(.+)", key):
            key = f"body.{int(m[1]) * num_res_blocks}.in_conv.{m[2]}"
        out[key] = value.contiguous()
    return out


def save_tiny_t2i_adapter(path: str | Path, family: str = "sd1", *, layout: str = "original",
                          **kwargs) -> Path:  # fmt: skip
    """layout: "original" (TencentARC's; .pth or .safetensors by the suffix) or
    "diffusers" (one file with `adapter.*` keys)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_tiny_t2i_adapter(family, **kwargs)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if layout == "original":
        state = t2i_adapter_to_original(state, model.config.num_res_blocks)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path
