"""Key mapping from diffusers/transformers state dicts to the original (LDM) layout.

Each function takes a component's state dict and returns a new dict in the layout that
single-file A1111/LDM checkpoints use, *without* the component prefix
(``model.diffusion_model.`` etc.; export.py adds those). Every input key must be mapped:
an unknown key raises ``KeyError`` instead of being dropped silently.
"""

from __future__ import annotations

import re

import torch

StateDict = dict[str, torch.Tensor]

# --- UNet ---------------------------------------------------------------------------

_UNET_FIXED_PREFIXES = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "class_embedding.linear_1.": "label_emb.0.0.",
    "class_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_BLOCK = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_UNET_SAMPLER = re.compile(r"(down|up)_blocks\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(.+)")
_UNET_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")


def _unet_resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{_UNET_RESNET_NAMES[name]}.{tail}"


def _unet_key(key: str, layers_per_block: int, up_levels_with_attention: set[int]) -> str:
    for old, new in _UNET_FIXED_PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    per_level = layers_per_block + 1
    if m := _UNET_BLOCK.fullmatch(key):
        side, level, kind, layer, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if side == "down":
            block = f"input_blocks.{1 + level * per_level + layer}"
        else:
            block = f"output_blocks.{level * per_level + layer}"
        return f"{block}.0.{_unet_resnet(rest)}" if kind == "resnets" else f"{block}.1.{rest}"
    if m := _UNET_SAMPLER.fullmatch(key):
        side, level, rest = m[1], int(m[2]), m[4]
        if side == "down":
            return f"input_blocks.{(level + 1) * per_level}.0.op.{rest}"
        slot = 2 if level in up_levels_with_attention else 1
        return f"output_blocks.{level * per_level + layers_per_block}.{slot}.conv.{rest}"
    if m := _UNET_MID.fullmatch(key):
        kind, index, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_unet_resnet(rest)}"
        return f"middle_block.1.{rest}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def unet_to_ldm(state_dict: StateDict, layers_per_block: int) -> StateDict:
    """UNet2DConditionModel weights -> ``openaimodel.UNetModel`` names (SD1/SD2/SDXL)."""
    up_attention = {
        int(k.split(".")[1])
        for k in state_dict
        if k.startswith("up_blocks.") and ".attentions." in k
    }
    return {_unet_key(k, layers_per_block, up_attention): v for k, v in state_dict.items()}


# --- VAE ----------------------------------------------------------------------------

_VAE_ATTENTION_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_VAE_DOWN = re.compile(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.+)")
_VAE_UP = re.compile(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)")
_VAE_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets\.(\d+)|attentions\.0)\.(.+)")
_VAE_PLAIN = re.compile(r"(encoder\.|decoder\.)?(conv_in|conv_out|quant_conv|post_quant_conv)\..+")


def _vae_resnet(rest: str) -> str:
    return rest.replace("conv_shortcut", "nin_shortcut")


def _vae_attention(rest: str) -> str:
    for old, new in _VAE_ATTENTION_NAMES.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    raise KeyError(rest)


def _vae_key(key: str, num_levels: int) -> str:
    if _VAE_PLAIN.fullmatch(key):
        return key
    if key.startswith(("encoder.conv_norm_out.", "decoder.conv_norm_out.")):
        return key.replace("conv_norm_out", "norm_out")
    if m := _VAE_DOWN.fullmatch(key):
        level, layer, rest = m[1], m[3], m[4]
        if layer is None:
            return f"encoder.down.{level}.downsample.{rest}"
        return f"encoder.down.{level}.block.{layer}.{_vae_resnet(rest)}"
    if m := _VAE_UP.fullmatch(key):
        level, layer, rest = num_levels - 1 - int(m[1]), m[3], m[4]
        if layer is None:
            return f"decoder.up.{level}.upsample.{rest}"
        return f"decoder.up.{level}.block.{layer}.{_vae_resnet(rest)}"
    if m := _VAE_MID.fullmatch(key):
        side, layer, rest = m[1], m[3], m[4]
        if layer is None:
            return f"{side}.mid.attn_1.{_vae_attention(rest)}"
        return f"{side}.mid.block_{int(layer) + 1}.{_vae_resnet(rest)}"
    raise KeyError(f"no LDM name for VAE key {key!r}")


def _vae_value(ldm_key: str, value: torch.Tensor) -> torch.Tensor:
    # The original VAE attention uses 1x1 convolutions where diffusers uses linear layers.
    if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and value.ndim == 2:
        return value[:, :, None, None]
    return value


def vae_to_ldm(state_dict: StateDict, num_levels: int) -> StateDict:
    """AutoencoderKL weights -> LDM ``Encoder``/``Decoder`` names (attention as 1x1 convs)."""
    out = {}
    for key, value in state_dict.items():
        ldm_key = _vae_key(key, num_levels)
        out[ldm_key] = _vae_value(ldm_key, value)
    return out


# --- Text encoders ------------------------------------------------------------------


def _without_text_model_prefix(state_dict: StateDict) -> StateDict:
    # transformers >= 5.6 flattens CLIPTextModel (no ``text_model.``); the projection
    # variant still nests it. Normalise both to the flat form.
    return {k.removeprefix("text_model."): v for k, v in state_dict.items()}


def clip_to_ldm(state_dict: StateDict) -> StateDict:
    """CLIPTextModel weights -> HF-transformers layout as stored in SD1 / SDXL embedder 0."""
    flat = _without_text_model_prefix(state_dict)
    return {(k if k == "text_projection.weight" else f"text_model.{k}"): v for k, v in flat.items()}


_OPEN_CLIP_FIXED = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER_NAMES = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_CLIP_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_CLIP_QKV = re.compile(r"self_attn\.[qkv]_proj")


def _open_clip_layer(state_dict: StateDict, index: int) -> StateDict:
    src, dst = f"encoder.layers.{index}.", f"transformer.resblocks.{index}."
    out = {}
    for kind in ("weight", "bias"):
        qkv = [state_dict[f"{src}self_attn.{x}_proj.{kind}"] for x in "qkv"]
        out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv, dim=0)
        for old, new in _OPEN_CLIP_LAYER_NAMES.items():
            out[f"{dst}{new}.{kind}"] = state_dict[f"{src}{old}.{kind}"]
    return out


def clip_to_open_clip(state_dict: StateDict) -> StateDict:
    """CLIPTextModel(WithProjection) weights -> OpenCLIP text tower names (SD2, SDXL bigG).

    q/k/v are concatenated into ``in_proj_*``; ``text_projection`` is stored transposed,
    as OpenCLIP multiplies ``x @ text_projection``.
    """
    flat = _without_text_model_prefix(state_dict)
    out = {new: flat[old] for old, new in _OPEN_CLIP_FIXED.items()}
    if "text_projection.weight" in flat:
        out["text_projection"] = flat["text_projection.weight"].T.contiguous()
    layers = set()
    for key in flat:
        if key in _OPEN_CLIP_FIXED or key == "text_projection.weight":
            continue
        m = _CLIP_LAYER.fullmatch(key)
        if m is None or not (_CLIP_QKV.fullmatch(m[2]) or m[2] in _OPEN_CLIP_LAYER_NAMES):
            raise KeyError(f"no OpenCLIP name for text encoder key {key!r}")
        layers.add(int(m[1]))
    for index in sorted(layers):
        out.update(_open_clip_layer(flat, index))
    return out
