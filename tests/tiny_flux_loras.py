"""Tiny FLUX LoRA files for the tiny FLUX model (`webui.model_manager.tiny_flux`), in the
layouts users have:

- kohya / sd-scripts: `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight`, `.lora_up`,
  `.alpha`, and CLIP-L as `lora_te1_text_model_encoder_layers_0_self_attn_q_proj...`;
- Black Forest Labs' names (ComfyUI): `diffusion_model.double_blocks.0.img_attn.qkv.lora_A`;
- ai-toolkit / diffusers / peft: `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`;
- XLabs: `double_blocks.0.processor.qkv_lora1.down.weight` (double blocks only, no alpha).

`bfl_pairs` makes the (down, up) pairs on the fused BFL layers; `merged_transformer` is
the reference: the pairs' deltas added to the BFL weights and the result loaded, so a
converter can be checked against it. `transformer_out` / `sd3_transformer_out` run a tiny
FLUX / SD 3.5 transformer on fixed inputs; `lora_change` is what a LoRA file changes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from webui.model_manager.flux_lora import bfl_module_names
from webui.model_manager.tiny_flux import bfl_transformer_state

TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def bfl_pairs(transformer, *, rank=4, seed=3, scale=0.2, names=None,
              original=bfl_transformer_state) -> dict[str, tuple[torch.Tensor, ...]]:  # fmt: skip
    """A random (down, up) pair on every linear layer of the transformer, BFL-named (or on
    `names`, with the weights in the original names from `original`: SD 3.5's)."""
    shapes = {k: v.shape for k, v in original(transformer).items()}
    gen = torch.Generator().manual_seed(seed)
    config = transformer.config
    if names is None:
        names = bfl_module_names(config.num_layers, config.num_single_layers)
    pairs = {}
    for name in names:
        if f"{name}.weight" not in shapes or (name.startswith("guidance_in") and not config.guidance_embeds):  # fmt: skip
            continue
        out_features, in_features = shapes[f"{name}.weight"]
        pairs[name] = (torch.randn(rank, in_features, generator=gen) * scale,
                       torch.randn(out_features, rank, generator=gen) * scale)  # fmt: skip
    return pairs


def write_kohya(path: Path, pairs: dict, *, alpha: float = 2.0, text_encoder=None,
                text_encoders=None) -> Path:  # fmt: skip
    """kohya's names; `text_encoder` gets `lora_te1_` keys on its first layer, or each of
    `text_encoders` (prefix -> encoder: SD 3.5's `lora_te1_`, `lora_te2_`) its prefix's."""
    state = kohya_state(pairs, alpha)
    encoders = dict(text_encoders or {})
    if text_encoder is not None:
        encoders["lora_te1_"] = text_encoder
    gen = torch.Generator().manual_seed(9)
    for prefix, encoder in encoders.items():
        for name, module in encoder.named_modules():
            if name.endswith(TE_TARGETS) and "layers.0." in name:
                flat = name if name.startswith("text_model.") else f"text_model.{name}"
                key = prefix + flat.replace(".", "_")
                state[f"{key}.lora_down.weight"] = torch.randn(4, module.in_features, generator=gen) * 0.5  # fmt: skip
                state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 4, generator=gen) * 0.5  # fmt: skip
    save_file(state, str(path), metadata={"ss_network_module": "networks.lora_flux"})
    return path


def kohya_state(pairs: dict, alpha: float) -> dict[str, torch.Tensor]:
    """The pairs under kohya's names (`lora_unet_` + the layer's, dots as underscores)."""
    state = {}
    for name, (down, up) in pairs.items():
        key = "lora_unet_" + name.replace(".", "_")
        state[f"{key}.lora_down.weight"] = down.contiguous()
        state[f"{key}.lora_up.weight"] = up.contiguous()
        state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


def write_ab(path: Path, pairs: dict, prefix: str, alpha: float | None = None) -> Path:
    """The pairs as `{prefix}{layer}.lora_A.weight` / `.lora_B.weight` (peft's names under
    "transformer.", BFL's and ai-toolkit's under "diffusion_model."), with `.alpha` if given."""
    state = {}
    for name, (down, up) in pairs.items():
        state[f"{prefix}{name}.lora_A.weight"] = down.contiguous()
        state[f"{prefix}{name}.lora_B.weight"] = up.contiguous()
        if alpha is not None:
            state[f"{prefix}{name}.alpha"] = torch.tensor(alpha)
    save_file(state, str(path))
    return path


def write_bfl(path: Path, pairs: dict) -> Path:
    return write_ab(path, pairs, "diffusion_model.")


def write_peft(path: Path, transformer, *, rank=4, seed=4, scale=0.2) -> Path:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in transformer.named_modules():
        module = getattr(module, "base_layer", module)  # a model that has adapters already
        if ".lora_" in name or ".base_layer" in name or not isinstance(module, torch.nn.Linear):
            continue
        if "attn.to_" in name or name.endswith(("proj_mlp", "proj_out", "ff.net.2")):
            state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=gen) * scale  # fmt: skip
            state[f"transformer.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=gen) * scale  # fmt: skip
    save_file(state, str(path))
    return path


def write_xlabs(path: Path, transformer, *, rank=4, seed=5, scale=0.2) -> Path:
    gen = torch.Generator().manual_seed(seed)
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    state = {}
    for i in range(transformer.config.num_layers):
        for name, out_features in (("qkv_lora1", 3 * width), ("qkv_lora2", 3 * width),
                                   ("proj_lora1", width), ("proj_lora2", width)):  # fmt: skip
            key = f"double_blocks.{i}.processor.{name}"
            state[f"{key}.down.weight"] = torch.randn(rank, width, generator=gen) * scale
            state[f"{key}.up.weight"] = torch.randn(out_features, rank, generator=gen) * scale
    save_file(state, str(path))
    return path


def merged_transformer(transformer, pairs: dict, *, alpha: float | None = None,
                       original=bfl_transformer_state, build=None):  # fmt: skip
    """A copy of `transformer` with each pair's delta (up @ down, times alpha / rank)
    added to its BFL weight (or `original`'s, built back by `build`: SD 3.5's): what a
    LoRA of weight 1 must compute."""
    from webui.model_manager import flux_files

    state = original(transformer)
    for name, (down, up) in pairs.items():
        factor = alpha / down.shape[0] if alpha is not None else 1.0
        state[f"{name}.weight"] = state[f"{name}.weight"] + factor * (up @ down)
    build = build or flux_files.build_transformer
    return build(dict(transformer.config), state, torch.float32)


def stability_pairs(pipe) -> dict[str, tuple[torch.Tensor, ...]]:
    """`bfl_pairs` on every layer of a tiny SD 3.5 MMDiT a LoRA targets, Stability-named."""
    from webui.model_manager.sd3_lora import layer_names
    from webui.model_manager.tiny_sd3 import stability_transformer_state

    names = layer_names(dict(pipe.transformer.config))
    return bfl_pairs(pipe.transformer, names=names, original=stability_transformer_state)


@torch.no_grad()
def transformer_out(transformer) -> torch.Tensor:
    """A tiny FLUX transformer's output for fixed random latents (16 tokens) and captions."""
    gen = torch.Generator().manual_seed(0)
    return transformer(
        hidden_states=torch.randn(1, 16, 64, generator=gen),
        encoder_hidden_states=torch.randn(1, 5, 32, generator=gen),
        pooled_projections=torch.randn(1, 32, generator=gen), timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3),
        return_dict=False,
    )[0]  # fmt: skip


@torch.no_grad()
def sd3_transformer_out(transformer) -> torch.Tensor:
    """A tiny SD 3.5 transformer's output for fixed random latents (8x8) and captions."""
    gen = torch.Generator().manual_seed(0)
    return transformer(hidden_states=torch.randn(1, 16, 8, 8, generator=gen),
                       encoder_hidden_states=torch.randn(1, 5, 128, generator=gen),
                       pooled_projections=torch.randn(1, 96, generator=gen),
                       timestep=torch.tensor([500.0]), return_dict=False)[0]  # fmt: skip


def lora_change(pipe, family, path: Path, out=transformer_out) -> torch.Tensor:
    """The LoRA file `path` loaded by `family` on `pipe` (adapter "kohya"): what it changes
    in `out` at weight 1; at weight 0, and with the LoRA disabled (as left), the output is
    the one without it again."""
    base = out(pipe.transformer)
    family.load_lora(pipe, load_file(str(path)), "kohya")
    pipe.set_adapters(["kohya"], [1.0])
    change = out(pipe.transformer) - base
    pipe.set_adapters(["kohya"], [0.0])
    assert torch.equal(out(pipe.transformer), base)
    pipe.disable_lora()
    assert torch.equal(out(pipe.transformer), base)
    return change
