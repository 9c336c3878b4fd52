"""SD 3.5 files without their weights: where each component lies in a file (`SD3Layout`),
what a separate module file is for an SD 3.5 transformer (`module_kinds`), the diffusers and
transformers configs read from tensor shapes, and the message naming a missing module.

Layouts: Stability's and ComfyUI's single files (MMDiT under `model.diffusion_model.`:
`joint_blocks.N.{x_block,context_block}.*`, `x_embedder`, `context_embedder`, `y_embedder`,
`t_embedder`, `pos_embed`; Medium's dual attention `x_block.attn2.*`), with or without the
autoencoder (`first_stage_model.`) and the text encoders (`text_encoders.clip_l.transformer.`,
`text_encoders.clip_g.transformer.`, `text_encoders.t5xxl.transformer.`); the transformer
alone, with or without the prefix; separate modules (`clip_l.safetensors`,
`clip_g.safetensors`, `t5xxl_*.safetensors`, a 16-channel VAE).

Every size comes from the tensors (Large, Large Turbo, Medium and pruned variants load
alike); only what weights cannot tell follows SD 3's convention (64-wide heads when the
file has no q/k norm to read them from, the autoencoder's scaling and shift). CLIP-L and
CLIP-G are told apart by width: CLIP-L's hidden width is less than half the pooled vector
the transformer takes (768 of 2048; CLIP-G's 1280 is more). `sd3_files` builds the weights.

This module reads shapes only: it must never import torch or a UI library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .flux_keys import clip_l_config, t5_config
from .flux_keys import vae_config as ldm_vae_config
from .identify import Shapes, UnsupportedModelError, count, parts_message

DIFFUSION_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
CLIP_G_PREFIX = "text_encoders.clip_g.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
MARKER = "joint_blocks.0.context_block.adaLN_modulation.1.weight"  # an MMDiT (SD 3)
VAE_SCALING, VAE_SHIFT = 1.5305, 0.0609  # SD 3's 16-channel autoencoder
COMPONENTS = ("transformer", "vae", "clip_l", "clip_g", "t5xxl")
MODULE_HELP = {
    "vae": ("the SD 3 autoencoder", "a 16-channel SD 3 VAE (sd3_vae.safetensors)", "VAE"),
    "clip_l": ("the CLIP-L text encoder", "clip_l.safetensors", "text_encoder"),
    "clip_g": ("the CLIP-G text encoder", "clip_g.safetensors", "text_encoder"),
    "t5xxl": (
        "the T5-XXL text encoder",
        "t5xxl_fp16.safetensors, t5xxl_fp8_e4m3fn.safetensors or a GGUF such as "
        "t5-v1_1-xxl-encoder-Q8_0.gguf",
        "text_encoder",
    ),
}

# The MMDiT's layers in diffusers' names -> Stability's (the tiny builder's writer, LoRA keys)
TOP_NAMES = {  # diffusers -> Stability, outside the blocks
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
}
BLOCK_NAMES = {  # inside transformer_blocks.N -> joint_blocks.N
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
QKV_NAMES = {"attn.to_": "x_block.attn.qkv", "attn.add_": "context_block.attn.qkv",
             "attn2.to_": "x_block.attn2.qkv"}  # fmt: skip


@dataclass(frozen=True)
class SD3Layout:
    """Where each component's tensors are in one file (None: not in it)."""

    transformer: str | None
    vae: str | None = None
    clip_l: str | None = None
    clip_g: str | None = None
    t5xxl: str | None = None

    @classmethod
    def of(cls, shapes: Shapes) -> SD3Layout:
        transformer = next((p for p in (DIFFUSION_PREFIX, "") if f"{p}{MARKER}" in shapes), None)
        return cls(
            transformer=transformer,
            vae=VAE_PREFIX if f"{VAE_PREFIX}decoder.conv_out.weight" in shapes else None,
            clip_l=CLIP_L_PREFIX if _is_clip(shapes, CLIP_L_PREFIX) else None,
            clip_g=CLIP_G_PREFIX if _is_clip(shapes, CLIP_G_PREFIX) else None,
            t5xxl=T5_PREFIX if _is_t5(shapes, T5_PREFIX) else None,
        )

    def missing(self) -> tuple[str, ...]:
        """The components a transformer file needs from elsewhere, in Forge's order."""
        return tuple(name for name in COMPONENTS[1:] if getattr(self, name) is None)


def _is_clip(shapes: Shapes, prefix: str) -> bool:
    return f"{prefix}text_model.final_layer_norm.weight" in shapes


def _is_t5(shapes: Shapes, prefix: str) -> bool:
    return (
        f"{prefix}encoder.final_layer_norm.weight" in shapes and f"{prefix}shared.weight" in shapes
    )


def clip_width(shapes: Shapes, prefix: str = "") -> int:
    return shapes[f"{prefix}text_model.embeddings.token_embedding.weight"][1]


def module_kind(shapes: Shapes, pooled_width: int) -> str | None:
    """The kind ("vae", "clip_l", "clip_g", "t5xxl") of a separate module file for a
    transformer taking `pooled_width`-wide pooled vectors; None for none of them."""
    if "decoder.conv_out.weight" in shapes and "encoder.conv_in.weight" in shapes:
        return "vae" if shapes["decoder.conv_in.weight"][1] == 16 else None
    if _is_clip(shapes, ""):
        return "clip_l" if 2 * clip_width(shapes) < pooled_width else "clip_g"
    if _is_t5(shapes, ""):
        return "t5xxl"
    return None


def missing_message(file_name: str, missing: list[str] | tuple[str, ...]) -> str:
    """What a partial SD 3.5 file lacks, the files that give it and where they go."""
    return parts_message(file_name, "an SD 3.5", missing, MODULE_HELP)


# --- configs from tensors ---------------------------------------------------------------
def transformer_config(shapes: Shapes, prefix: str) -> dict:
    """The diffusers `SD3Transformer2DModel` config of an MMDiT in Stability's key names."""
    hidden, in_channels, patch, _ = shapes[f"{prefix}x_embedder.proj.weight"]
    norm = f"{prefix}joint_blocks.0.x_block.attn.ln_q.weight"
    head_dim = shapes[norm][0] if norm in shapes else 64
    if hidden % head_dim:
        raise UnsupportedModelError(f"SD 3 transformer width {hidden} is not a multiple of "
                                    f"its heads' width {head_dim}")  # fmt: skip
    positions = shapes[f"{prefix}pos_embed"][1]
    side = math.isqrt(positions)
    if side * side != positions:
        raise UnsupportedModelError(f"SD 3 position embedding of {positions} is not a square")
    layers = count(shapes, f"{prefix}joint_blocks.{{}}.")
    dual = [
        i for i in range(layers) if f"{prefix}joint_blocks.{i}.x_block.attn2.qkv.weight" in shapes
    ]
    return {
        "_class_name": "SD3Transformer2DModel",
        "sample_size": 128,
        "patch_size": patch,
        "in_channels": in_channels,
        "out_channels": shapes[f"{prefix}final_layer.linear.weight"][0] // (patch * patch),
        "num_layers": layers,
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shapes[f"{prefix}context_embedder.weight"][1],
        "caption_projection_dim": shapes[f"{prefix}context_embedder.weight"][0],
        "pooled_projection_dim": shapes[f"{prefix}y_embedder.mlp.0.weight"][1],
        "pos_embed_max_size": side,
        "dual_attention_layers": dual,
        "qk_norm": "rms_norm" if norm in shapes else None,
    }


def vae_config(shapes: Shapes, prefix: str) -> dict:
    """The diffusers `AutoencoderKL` config of SD 3's 16-channel autoencoder (LDM names)."""
    return {**ldm_vae_config(shapes, prefix), "scaling_factor": VAE_SCALING,
            "shift_factor": VAE_SHIFT}  # fmt: skip


def clip_config(shapes: Shapes, prefix: str, kind: str) -> dict:
    """CLIP-L (quick GELU, its pooled vector unprojected as SD 3's reference reads it) or
    CLIP-G (GELU, projected by the file's `text_projection`) with a projection layer."""
    config = clip_l_config(shapes, prefix)
    width = config["hidden_size"]
    projection = shapes.get(f"{prefix}text_projection.weight", (width, width))
    config.update(architectures=["CLIPTextModelWithProjection"], projection_dim=projection[0])
    if kind == "clip_g":
        config["hidden_act"] = "gelu"
    else:
        config["projection_dim"] = width
    return config


def encoder_configs(shapes: Shapes, layout: SD3Layout) -> tuple[dict, ...]:
    """The configs of the text encoders inside a file ((): none or not all of them)."""
    if layout.clip_l is None or layout.clip_g is None or layout.t5xxl is None:
        return ()
    return (clip_config(shapes, layout.clip_l, "clip_l"),
            clip_config(shapes, layout.clip_g, "clip_g"), t5_config(shapes, layout.t5xxl))  # fmt: skip


# the scheduler config SD 3.5 files load with (flow matching, a fixed shift of 3)
SD3_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": False,
}
