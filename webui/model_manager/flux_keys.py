"""FLUX.1 files without their weights: where each component lies in a file
(`FluxLayout`), what a separate module file is (`module_kind`), the diffusers and
transformers configs read from tensor shapes, and the message naming a missing module.

Layouts: Black Forest Labs' transformer-only file (`double_blocks.*`, `single_blocks.*` at
the top level or under `model.diffusion_model.`); all-in-one files as ComfyUI and Forge save
them (transformer under `model.diffusion_model.`, autoencoder under `vae.`, CLIP-L under
`text_encoders.clip_l.transformer.`, T5-XXL under `text_encoders.t5xxl.transformer.`);
separate modules (`ae.safetensors`, `clip_l.safetensors`, `t5xxl_*.safetensors`). Every
size is read from the tensors; only what weights cannot tell follows FLUX.1's convention
(rotary axes, the autoencoder's scaling and shift). `flux_files` builds the weights.

This module reads shapes only: it must never import torch or a UI library (the services
check module files with it in request threads).
"""

from __future__ import annotations

from dataclasses import dataclass

from .identify import (
    Shapes,
    UnsupportedModelError,
    count,
    hf_clip_config,
    parts_message,
    rope_axes_of,
)

DIFFUSION_PREFIX = "model.diffusion_model."
VAE_PREFIX = "vae."
CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
MARKER = "double_blocks.0.img_attn.qkv.weight"  # a BFL-layout FLUX transformer
VAE_SCALING, VAE_SHIFT = 0.3611, 0.1159  # FLUX.1's autoencoder (ae.safetensors)
COMPONENTS = ("transformer", "vae", "clip_l", "t5xxl")
# what a missing component is called, the files that give it, and Forge's folder for it
MODULE_HELP = {
    "vae": ("the FLUX autoencoder", "ae.safetensors", "VAE"),
    "clip_l": ("the CLIP-L text encoder", "clip_l.safetensors", "text_encoder"),
    "t5xxl": (
        "the T5-XXL text encoder",
        "t5xxl_fp16.safetensors, t5xxl_fp8_e4m3fn.safetensors or a GGUF such as "
        "t5-v1_1-xxl-encoder-Q8_0.gguf",
        "text_encoder",
    ),
}


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


def missing_message(file_name: str, missing: list[str] | tuple[str, ...]) -> str:
    """What a transformer-only file lacks, the files that give it and where they go."""
    return parts_message(file_name, "a FLUX", missing, MODULE_HELP)


# --- configs from tensors ---------------------------------------------------------------
def rope_axes(head_dim: int) -> list[int]:
    """FLUX.1's rotary axes (time, height, width): (16, 56, 56) of a 128-wide head."""
    return rope_axes_of(head_dim, head_dim // 8, "FLUX")


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


# the scheduler config FLUX.1 files load with (BFL's: dynamic shift by image size)
FLUX_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
