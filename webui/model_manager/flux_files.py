"""FLUX.1 files: their layouts, the configs read from their tensors, and their weights in
diffusers' classes.

Layouts (`FluxLayout.of`):

- Black Forest Labs' transformer-only file: `double_blocks.*`, `single_blocks.*`, ...
  at the top level (flux1-dev.safetensors) or under `model.diffusion_model.` (ComfyUI's
  and Kijai's fp8 files);
- all-in-one files as ComfyUI and Forge save them: the transformer under
  `model.diffusion_model.`, the autoencoder under `vae.` (BFL/LDM key names), CLIP-L
  under `text_encoders.clip_l.transformer.` and T5-XXL under
  `text_encoders.t5xxl.transformer.` (transformers key names);
- separate modules (`module_kind`): `ae.safetensors` (the autoencoder, no prefix),
  `clip_l.safetensors` (`text_model.*`), `t5xxl_*.safetensors` (`encoder.*`, `shared.*`).

Every size (blocks, width, heads, channels, vocabulary) is read from the tensors; only
what weights cannot tell follows FLUX.1's convention (rotary axes split 1:7:7 of the head
width as (16, 56, 56) for 128, the autoencoder's scaling and shift).

Two traps of diffusers 0.42's single-file path are avoided by converting here:
its FLUX converter splits `single_blocks.N.linear1` at FLUX.1's width 3072 whatever the
file's width (`transformer_state` splits at the width read from the tensors), and its T5
loader fills `shared.weight` but not `encoder.embed_tokens.weight` (`build_t5` ties them).

This module must never touch the network, never import `webui.core` or a UI library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .identify import Shapes, UnsupportedModelError, count, hf_clip_config

DIFFUSION_PREFIX = "model.diffusion_model."
VAE_PREFIX = "vae."
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
MARKER = "double_blocks.0.img_attn.qkv.weight"  # a BFL-layout FLUX transformer
VAE_SCALING, VAE_SHIFT = 0.3611, 0.1159  # FLUX.1's autoencoder (ae.safetensors)
COMPONENTS = ("transformer", "vae", "clip_l", "t5xxl")


@dataclass(frozen=True)
class FluxLayout:
    """Where each component's tensors are in one file (None: not in it)."""

    transformer: str | None
    vae: str | None = None
    clip_l: str | None = None
    t5xxl: str | None = None

    @classmethod
    def of(cls, shapes: Shapes) -> FluxLayout:
        transformer = next((p for p in ("", DIFFUSION_PREFIX) if f"{p}{MARKER}" in shapes), None)
        return cls(
            transformer=transformer,
            vae=VAE_PREFIX if f"{VAE_PREFIX}decoder.conv_out.weight" in shapes else None,
            clip_l=CLIP_L_PREFIX if _is_clip_l(shapes, CLIP_L_PREFIX) else None,
            t5xxl=T5_PREFIX if _is_t5(shapes, T5_PREFIX) else None,
        )

    def missing(self) -> tuple[str, ...]:
        """The components a transformer file needs from elsewhere, in Forge's order."""
        return tuple(name for name in COMPONENTS[1:] if getattr(self, name) is None)


def _is_clip_l(shapes: Shapes, prefix: str) -> bool:
    return f"{prefix}text_model.final_layer_norm.weight" in shapes


def _is_t5(shapes: Shapes, prefix: str) -> bool:
    return f"{prefix}encoder.final_layer_norm.weight" in shapes


def module_kind(shapes: Shapes) -> str | None:
    """The kind ("vae", "clip_l" or "t5xxl") of a separate module file (Forge's VAE / Text Encoder
    list), None when it is none of them."""
    if "decoder.conv_out.weight" in shapes and "encoder.conv_in.weight" in shapes:
        return "vae"
    if _is_clip_l(shapes, ""):
        return "clip_l"
    if _is_t5(shapes, "") and "shared.weight" in shapes:
        return "t5xxl"
    return None


# --- configs from tensors ---------------------------------------------------------------
def rope_axes(head_dim: int) -> list[int]:
    """FLUX.1's rotary axes (time, height, width): (16, 56, 56) of a 128-wide head."""
    first = head_dim // 8
    side = (head_dim - first) // 2
    if first % 2 or side % 2 or first + 2 * side != head_dim:
        raise UnsupportedModelError(f"FLUX head width {head_dim} cannot be split in rotary axes")
    return [first, side, side]


def transformer_config(shapes: Shapes, prefix: str) -> dict:
    """The diffusers `FluxTransformer2DModel` config of a BFL-layout transformer."""
    hidden, in_channels = shapes[f"{prefix}img_in.weight"]
    head_dim = shapes[f"{prefix}double_blocks.0.img_attn.norm.query_norm.scale"][0]
    mlp = shapes[f"{prefix}double_blocks.0.img_mlp.0.weight"][0]
    if mlp != 4 * hidden or hidden % head_dim:
        raise UnsupportedModelError(
            f"FLUX transformer with width {hidden}, MLP {mlp}, heads of {head_dim}: "
            "only an MLP of 4x the width loads"
        )
    return {
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": shapes[f"{prefix}final_layer.linear.weight"][0],
        "num_layers": count(shapes, f"{prefix}double_blocks.{{}}."),
        "num_single_layers": count(shapes, f"{prefix}single_blocks.{{}}."),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shapes[f"{prefix}txt_in.weight"][1],
        "pooled_projection_dim": shapes[f"{prefix}vector_in.in_layer.weight"][1],
        "guidance_embeds": f"{prefix}guidance_in.in_layer.weight" in shapes,
        "axes_dims_rope": rope_axes(head_dim),
    }


def vae_config(shapes: Shapes, prefix: str) -> dict:
    """The diffusers `AutoencoderKL` config of FLUX.1's autoencoder (BFL key names)."""
    levels = count(shapes, f"{prefix}encoder.down.{{}}.")
    channels = [shapes[f"{prefix}encoder.down.{i}.block.0.conv2.weight"][0] for i in range(levels)]
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": shapes[f"{prefix}encoder.conv_in.weight"][1],
        "out_channels": shapes[f"{prefix}decoder.conv_out.weight"][0],
        "latent_channels": shapes[f"{prefix}decoder.conv_in.weight"][1],
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": count(shapes, f"{prefix}encoder.down.0.block.{{}}."),
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": VAE_SCALING,
        "shift_factor": VAE_SHIFT,
        "use_quant_conv": f"{prefix}quant_conv.weight" in shapes,
        "use_post_quant_conv": f"{prefix}post_quant_conv.weight" in shapes,
        "force_upcast": True,
    }


def clip_l_config(shapes: Shapes, prefix: str) -> dict:
    """CLIP ViT-L's text model (transformers key names under `prefix`)."""
    return hf_clip_config(shapes, f"{prefix}text_model.", "quick_gelu")


def t5_config(shapes: Shapes, prefix: str) -> dict:
    """The transformers `T5EncoderModel` config of a T5 v1.1 encoder (gated GELU)."""
    vocab, width = shapes[f"{prefix}shared.weight"]
    block = f"{prefix}encoder.block.0.layer."
    heads = shapes[f"{block}0.SelfAttention.relative_attention_bias.weight"][1]
    return {
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "vocab_size": vocab,
        "d_model": width,
        "d_kv": shapes[f"{block}0.SelfAttention.q.weight"][0] // heads,
        "d_ff": shapes[f"{block}1.DenseReluDense.wi_0.weight"][0],
        "num_layers": count(shapes, f"{prefix}encoder.block.{{}}."),
        "num_heads": heads,
        "relative_attention_num_buckets": shapes[
            f"{block}0.SelfAttention.relative_attention_bias.weight"
        ][0],
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "is_encoder_decoder": False,
        "use_cache": False,
        "tie_word_embeddings": False,
    }


# --- weights ----------------------------------------------------------------------------
def read_state(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of `path` under `prefix`, the prefix removed (memory-mapped)."""
    with safe_open(str(path), framework="pt") as handle:
        return {key[len(prefix) :]: handle.get_tensor(key) for key in handle.keys()
                if key.startswith(prefix)}  # fmt: skip


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous wants
    (scale, shift)."""
    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


_DIRECT = {  # BFL name -> diffusers name, outside the blocks
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {  # inside double_blocks.N -> transformer_blocks.N
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
}
_SINGLE = {  # inside single_blocks.N -> single_transformer_blocks.N
    "modulation.lin": "norm.linear",
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
    "linear2": "proj_out",
}
_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}  # fmt: skip


def _renamed(rest: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return None


def transformer_state(state: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """A BFL-layout transformer state dict (prefix removed) in diffusers' names. The fused
    projections are split at `width`, the file's own (never FLUX.1's 3072); a key this
    does not know raises `UnsupportedModelError` instead of being dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block, _, rest = key.partition(".")
        if block in ("double_blocks", "single_blocks"):
            index, _, rest = rest.partition(".")
            out.update(_block_tensors(block, int(index), rest, value, width))
        elif key.startswith("final_layer.adaLN_modulation.1."):
            out["norm_out.linear." + key.rsplit(".", 1)[1]] = _swap_halves(value)
        elif (name := _renamed(key, _DIRECT)) is not None:
            out[name] = value
        else:
            raise UnsupportedModelError(f"unknown FLUX transformer tensor {key}")
    return out


def _block_tensors(block: str, index: int, rest: str, value: torch.Tensor, width: int) -> dict:
    kind = rest.rsplit(".", 1)[1]  # weight | bias | scale
    if block == "double_blocks":
        target = f"transformer_blocks.{index}."
        fused = rest.rsplit(".", 1)[0]
        if fused in _QKV:
            return {f"{target}{name}.{kind}": part
                    for name, part in zip(_QKV[fused], value.chunk(3, dim=0), strict=True)}  # fmt: skip
        name = _renamed(rest, _DOUBLE)
    else:
        target = f"single_transformer_blocks.{index}."
        if rest.startswith("linear1."):
            q, k, v, mlp = value.split([width, width, width, value.shape[0] - 3 * width], dim=0)
            names = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
            return {f"{target}{n}.{kind}": t for n, t in zip(names, (q, k, v, mlp), strict=True)}
        name = _renamed(rest, _SINGLE)
    if name is None:
        raise UnsupportedModelError(f"unknown FLUX transformer tensor {block}.{index}.{rest}")
    return {target + name: value}


def _empty(factory, *args: Any, **kwargs: Any):
    """A model built without allocating its weights (they are assigned from the file)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return factory(*args, **kwargs)


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    wanted = model.state_dict().keys()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise UnsupportedModelError(f"{what}: tensors missing ({', '.join(missing[:3])} ...)")
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, assign=True)


def _in_dtype(model, dtype: torch.dtype):
    """The model in the compute dtype, in eval mode."""
    if any(p.dtype != dtype for p in model.parameters()):
        model = model.to(dtype)
    return model.eval()


def build_transformer(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel

    model = _empty(FluxTransformer2DModel.from_config, config)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    _assign(model, transformer_state(state, width), "FLUX transformer")
    return _in_dtype(model, dtype)


def build_vae(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    model = _empty(AutoencoderKL.from_config, config)
    _assign(model, convert_ldm_vae_checkpoint(state, config), "FLUX autoencoder")
    return _in_dtype(model, dtype)


def build_clip_l(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype):
    from transformers import CLIPTextConfig, CLIPTextModel

    model = _empty(CLIPTextModel, CLIPTextConfig(**config))
    if not any(k.startswith("text_model.") for k in model.state_dict()):  # transformers 5
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    _assign(model, state, "CLIP-L text encoder")
    return _in_dtype(model, dtype)


def build_t5(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype):
    """T5's encoder; `encoder.embed_tokens` is `shared` (files keep only `shared.weight`)."""
    from transformers import T5Config, T5EncoderModel

    model = _empty(T5EncoderModel, T5Config(**config))
    state = dict(state)
    state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    _assign(model, state, "T5 text encoder")
    model.encoder.embed_tokens.weight = model.shared.weight  # one tensor, as trained
    return _in_dtype(model, dtype)
