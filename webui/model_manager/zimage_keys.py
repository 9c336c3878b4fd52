"""Z-Image files without their weights: where the transformer lies in a file
(`transformer_prefix`), what a separate module file is (`module_kind`: the Qwen3 text
encoder; the autoencoder is FLUX.1's `ae.safetensors`, `flux_keys.module_kind`), the
diffusers and transformers configs read from tensor shapes, and the message naming a
missing module.

Layouts: ComfyUI's transformer-only file (`z_image_turbo_bf16.safetensors`: Lumina 2's
NextDiT names, `cap_embedder.*`, `noise_refiner.*`, `layers.N.attention.qkv`, `x_pad_token`,
at the top level or under `model.diffusion_model.`; recognised as ComfyUI does, by the
caption embedder and the refiner's QK norm, and told from Lumina 2 by its pad tokens) and
the same weights in diffusers' names (`all_x_embedder.2-1.*`); the Qwen3 text encoder as
ComfyUI ships it (`qwen_3_4b.safetensors`: transformers' `model.layers.*` names, with or
without the `model.` prefix); ComfyUI's all-in-one checkpoints (`layout`: the transformer
under `model.diffusion_model.`, FLUX's autoencoder under `vae.`, Qwen3 under
`text_encoders.qwen3_4b.transformer.`). GGUF files (ComfyUI-GGUF's "lumina2" architecture)
carry the transformer's ComfyUI names. Every size is read from the tensors; only what
weights cannot tell follows Z-Image's convention (2x2 patches, the rotary axes' split and
lengths, theta).

This module reads shapes only: it must never import torch or a UI library.
"""

from __future__ import annotations

from .identify import Shapes, UnsupportedModelError, count, parts_message, rope_axes_of

DIFFUSION_PREFIX = "model.diffusion_model."
VAE_PREFIX = "vae."
QWEN3_PREFIX = "text_encoders.qwen3_4b.transformer."  # ComfyUI's checkpoints (its clip_target)
COMPONENTS = ("transformer", "vae", "qwen3")
PATCH = 2  # Z-Image's 2x2 latent patches (the weights hold patch^2 * channels only)
# what a missing component is called, the files that give it, and Forge's folder for it
MODULE_HELP = {
    "vae": ("the FLUX autoencoder", "ae.safetensors", "VAE"),
    "qwen3": ("the Qwen3 text encoder", "qwen_3_4b.safetensors", "text_encoder"),
}


def transformer_prefix(shapes: Shapes) -> str | None:
    """Where a Z-Image transformer's tensors start ("" or `model.diffusion_model.`), None
    when the file holds none (a Lumina 2 file, without pad tokens, is not one)."""
    for prefix in ("", DIFFUSION_PREFIX):
        caption = f"{prefix}cap_embedder.1.weight" in shapes
        qk_norm = any(f"{prefix}noise_refiner.0.attention.{name}.weight" in shapes
                      for name in ("k_norm", "norm_k"))  # fmt: skip
        if caption and qk_norm and f"{prefix}x_pad_token" in shapes:
            return prefix
    return None


def diffusers_names(shapes: Shapes, prefix: str) -> bool:
    """Whether the transformer's tensors carry diffusers' names (else ComfyUI's)."""
    return f"{prefix}all_x_embedder.2-1.weight" in shapes


def layout(shapes: Shapes) -> dict[str, str | None]:
    """Where each component's tensors start in one file (None: not in it): the transformer
    alone, or ComfyUI's all-in-one checkpoint (`model.diffusion_model.`, `vae.`,
    `text_encoders.qwen3_4b.transformer.`)."""
    return {
        "transformer": transformer_prefix(shapes),
        "vae": VAE_PREFIX if f"{VAE_PREFIX}decoder.conv_out.weight" in shapes else None,
        "qwen3": _qwen3_prefix(shapes, QWEN3_PREFIX),
    }


def missing_components(shapes: Shapes) -> tuple[str, ...]:
    """The components a file needs from module files, in Forge's order."""
    found = layout(shapes)
    return tuple(name for name in COMPONENTS[1:] if found[name] is None)


def _qwen3_prefix(shapes: Shapes, outer: str = "") -> str | None:
    for prefix in (f"{outer}model.", outer):
        if (f"{prefix}layers.0.self_attn.q_norm.weight" in shapes
                and f"{prefix}embed_tokens.weight" in shapes):  # fmt: skip
            return prefix
    return None


def module_kind(shapes: Shapes) -> str | None:
    """The kind "qwen3" for a Qwen3 text encoder file, else None (the autoencoder is FLUX's)."""
    return "qwen3" if _qwen3_prefix(shapes) is not None else None


def missing_message(file_name: str, missing: list[str] | tuple[str, ...]) -> str:
    """What a Z-Image transformer file lacks, the files that give it and where they go."""
    extra = " (or a GGUF Qwen3 such as Qwen3-4B-Q8_0.gguf)" if "qwen3" in missing else ""
    return parts_message(file_name, "a Z-Image", missing, MODULE_HELP, extra)


# --- configs from tensors ---------------------------------------------------------------
def rope_axes(head_dim: int) -> list[int]:
    """Z-Image's rotary axes (time, height, width): (32, 48, 48) of a 128-wide head."""
    return rope_axes_of(head_dim, head_dim // 4, "Z-Image")


def transformer_config(shapes: Shapes, prefix: str) -> dict:
    """The diffusers `ZImageTransformer2DModel` config of a transformer file."""
    dim, cap_feat_dim = shapes[f"{prefix}cap_embedder.1.weight"]
    comfy = not diffusers_names(shapes, prefix)
    block = f"{prefix}layers.0.attention."
    head_dim = shapes[f"{block}{'q_norm' if comfy else 'norm_q'}.weight"][0]
    embed = shapes[f"{prefix}{'x_embedder' if comfy else 'all_x_embedder.2-1'}.weight"][1]
    if comfy:
        kv_heads = (shapes[f"{block}qkv.weight"][0] // head_dim - dim // head_dim) // 2
    else:
        kv_heads = shapes[f"{block}to_k.weight"][0] // head_dim
    ffn = shapes[f"{prefix}layers.0.feed_forward.w1.weight"][0]
    if dim % head_dim or kv_heads != dim // head_dim or ffn != int(dim / 3 * 8):
        raise UnsupportedModelError(
            f"Z-Image transformer with width {dim}, heads of {head_dim}, {kv_heads} key/value "
            f"heads and a feed-forward of {ffn}: only Z-Image's proportions load (Lumina 2 "
            "files are another model)"
        )
    return {
        "_class_name": "ZImageTransformer2DModel",
        "all_patch_size": [PATCH],
        "all_f_patch_size": [1],
        "in_channels": embed // (PATCH * PATCH),
        "dim": dim,
        "n_layers": count(shapes, f"{prefix}layers.{{}}."),
        "n_refiner_layers": count(shapes, f"{prefix}noise_refiner.{{}}."),
        "n_heads": dim // head_dim,
        "n_kv_heads": kv_heads,
        "norm_eps": 1e-5,
        "qk_norm": True,
        "cap_feat_dim": cap_feat_dim,
        "rope_theta": 256.0,
        "t_scale": 1000.0,
        "axes_dims": rope_axes(head_dim),
        "axes_lens": [1024, 512, 512],
    }


def qwen3_config(shapes: Shapes, outer: str = "") -> dict:
    """The transformers `Qwen3Config` of a Qwen3 text encoder file (or of the one under
    `outer` in an all-in-one file)."""
    prefix = qwen3_prefix(shapes, outer)
    vocab, hidden = shapes[f"{prefix}embed_tokens.weight"]
    attn = f"{prefix}layers.0.self_attn."
    head_dim = shapes[f"{attn}q_norm.weight"][0]
    return {
        "model_type": "qwen3",
        "architectures": ["Qwen3Model"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": shapes[f"{prefix}layers.0.mlp.gate_proj.weight"][0],
        "num_hidden_layers": count(shapes, f"{prefix}layers.{{}}."),
        "num_attention_heads": shapes[f"{attn}q_proj.weight"][0] // head_dim,
        "num_key_value_heads": shapes[f"{attn}k_proj.weight"][0] // head_dim,
        "head_dim": head_dim,
        "attention_bias": f"{attn}q_proj.bias" in shapes,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": 40960,
        "tie_word_embeddings": True,
        "use_cache": False,
    }


def qwen3_prefix(shapes: Shapes, outer: str = "") -> str:
    prefix = _qwen3_prefix(shapes, outer)
    if prefix is None:
        raise UnsupportedModelError("not a Qwen3 text encoder")
    return prefix


# the scheduler config Z-Image Turbo loads with (its scheduler_config.json: a fixed shift)
ZIMAGE_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": False,
}
