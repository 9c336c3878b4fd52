"""Identify a checkpoint's family and architecture from its tensors, not its file name.

Input is a mapping of tensor name -> shape (read from a file header, no weights loaded).
Output is a `ModelSpec`: the family (SD 1.x, SD 2.x, SDXL base, each possibly an inpainting
variant) and the diffusers config of every component, with every size that the tensors
determine taken from the tensors. Sizes that weights cannot tell (attention head counts,
norm groups) follow the family's published convention.

This module must never load weights, touch the network or import a UI library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UserError

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_TE = "cond_stage_model.transformer.text_model."
SD2_TE = "cond_stage_model.model."
XL_TE1 = "conditioner.embedders.0.transformer.text_model."
XL_TE2 = "conditioner.embedders.1.model."

FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}

Shapes = dict[str, tuple[int, ...]]


class UnsupportedModelError(ValueError, UserError):
    """The file is not a Stable Diffusion checkpoint this program can load."""


@dataclass(frozen=True)
class ModelSpec:
    family: str  # "sd1" | "sd2" | "sdxl"
    inpainting: bool
    prediction_type: str | None  # "epsilon", "v_prediction", or None when unknown from keys
    unet: dict = field(repr=False)
    vae: dict = field(repr=False)
    text_encoders: tuple[dict, ...] = field(repr=False)

    @property
    def label(self) -> str:
        text = FAMILY_LABELS[self.family]
        if self.inpainting:
            text += " inpainting"
        if self.prediction_type == "v_prediction":
            text += " (v-prediction)"
        return text

    @property
    def pipeline_class(self) -> str:
        base = "StableDiffusionXL" if self.family == "sdxl" else "StableDiffusion"
        return base + ("InpaintPipeline" if self.inpainting else "Pipeline")


def identify(shapes: Shapes) -> ModelSpec:
    """Return the spec of an LDM-layout (A1111 single-file) checkpoint."""
    if f"{UNET}input_blocks.0.0.weight" not in shapes:
        raise UnsupportedModelError(
            "not a Stable Diffusion checkpoint: no UNet tensors (model.diffusion_model.*) found"
        )
    if f"{VAE}decoder.conv_out.weight" not in shapes:
        raise UnsupportedModelError("checkpoint has no VAE (first_stage_model.*) tensors")
    family = _family(shapes)
    if family == "sdxl":
        te1 = _hf_clip_config(shapes, XL_TE1, "quick_gelu")
        te2 = _open_clip_config(shapes, XL_TE2, with_projection=True)
        text_encoders = (te1, te2)
        context_dim = te1["hidden_size"] + te2["hidden_size"]
    elif family == "sd2":
        text_encoders = (_open_clip_config(shapes, SD2_TE, with_projection=False),)
        context_dim = text_encoders[0]["hidden_size"]
    else:
        text_encoders = (_hf_clip_config(shapes, SD1_TE, "quick_gelu"),)
        context_dim = text_encoders[0]["hidden_size"]
    unet = _unet_config(shapes, family, text_encoders)
    if unet["cross_attention_dim"] != context_dim:
        raise UnsupportedModelError(
            f"UNet cross-attention width {unet['cross_attention_dim']} does not match "
            f"the text encoder width {context_dim}"
        )
    prediction = "v_prediction" if "v_pred" in shapes else None
    if family == "sd1" or (family == "sdxl" and prediction is None):
        prediction = "epsilon"
    return ModelSpec(
        family=family,
        inpainting=unet["in_channels"] == 9,
        prediction_type=prediction,
        unet=unet,
        vae=_vae_config(shapes, family),
        text_encoders=text_encoders,
    )


def _family(shapes: Shapes) -> str:
    if f"{XL_TE2}positional_embedding" in shapes:
        if f"{XL_TE1}embeddings.token_embedding.weight" not in shapes:
            raise UnsupportedModelError("SDXL refiner checkpoints are not supported yet")
        return "sdxl"
    if f"{SD2_TE}token_embedding.weight" in shapes:
        return "sd2"
    if f"{SD1_TE}embeddings.token_embedding.weight" in shapes:
        return "sd1"
    raise UnsupportedModelError("checkpoint has no text encoder this program knows (CLIP/OpenCLIP)")


def _count(shapes: Shapes, pattern: str) -> int:
    """Number of distinct indices N for which some key matches `pattern` with {} -> N."""
    regex = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)"))
    found = {int(m.group(1)) for key in shapes if (m := regex.match(key))}
    return max(found) + 1 if found else 0


def _heads(width: int) -> int:
    """SD 2.x, SDXL and OpenCLIP use 64-wide attention heads."""
    return max(1, width // 64)


def _unet_config(shapes: Shapes, family: str, text_encoders: tuple[dict, ...]) -> dict:
    conv_in = shapes[f"{UNET}input_blocks.0.0.weight"]
    levels: list[dict] = []
    level = {"channels": 0, "res": 0, "depth": 0}
    for i in range(1, _count(shapes, f"{UNET}input_blocks.{{}}.")):
        block = f"{UNET}input_blocks.{i}."
        if f"{block}0.op.weight" in shapes:  # downsample closes a level
            levels.append(level)
            level = {"channels": 0, "res": 0, "depth": 0}
            continue
        level["channels"] = shapes[f"{block}0.in_layers.2.weight"][0]
        level["res"] += 1
        level["depth"] = _count(shapes, f"{block}1.transformer_blocks.{{}}.")
    levels.append(level)

    first_attn = next(k for k in shapes if k.endswith("attn2.to_k.weight") and k.startswith(UNET))
    proj_in = next(k for k in shapes if k.startswith(UNET) and k.endswith(".proj_in.weight"))
    channels = [lv["channels"] for lv in levels]
    config = {
        "sample_size": {"sd1": 64, "sd2": 96, "sdxl": 128}[family],
        "in_channels": conv_in[1],
        "out_channels": shapes[f"{UNET}out.2.weight"][0],
        "block_out_channels": channels,
        "layers_per_block": levels[0]["res"],
        "down_block_types": [
            "CrossAttnDownBlock2D" if lv["depth"] else "DownBlock2D" for lv in levels
        ],
        "up_block_types": [
            "CrossAttnUpBlock2D" if lv["depth"] else "UpBlock2D" for lv in reversed(levels)
        ],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": shapes[first_attn][1],
        "use_linear_projection": len(shapes[proj_in]) == 2,
        "norm_num_groups": 32,
        "attention_head_dim": 8 if family == "sd1" else [_heads(c) for c in channels],
    }
    if family != "sd1":
        config["transformer_layers_per_block"] = [max(1, lv["depth"]) for lv in levels]
    if family == "sdxl":
        pooled = text_encoders[1]["projection_dim"]
        label_in = shapes[f"{UNET}label_emb.0.0.weight"][1]
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(label_in - pooled) // 6,
            projection_class_embeddings_input_dim=label_in,
        )
    return config


def _vae_config(shapes: Shapes, family: str) -> dict:
    n_levels = _count(shapes, f"{VAE}encoder.down.{{}}.")
    channels = [shapes[f"{VAE}encoder.down.{i}.block.0.conv2.weight"][0] for i in range(n_levels)]
    return {
        "in_channels": shapes[f"{VAE}encoder.conv_in.weight"][1],
        "out_channels": shapes[f"{VAE}decoder.conv_out.weight"][0],
        "latent_channels": shapes[f"{VAE}post_quant_conv.weight"][0],
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * n_levels,
        "up_block_types": ["UpDecoderBlock2D"] * n_levels,
        "layers_per_block": _count(shapes, f"{VAE}encoder.down.0.block.{{}}."),
        "norm_num_groups": 32,
        "sample_size": 1024 if family == "sdxl" else 512,
        "scaling_factor": 0.13025 if family == "sdxl" else 0.18215,
        "force_upcast": family == "sdxl",
    }


def _hf_clip_config(shapes: Shapes, prefix: str, act: str) -> dict:
    vocab, width = shapes[f"{prefix}embeddings.token_embedding.weight"]
    return {
        "architectures": ["CLIPTextModel"],
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": shapes[f"{prefix}encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": _count(shapes, f"{prefix}encoder.layers.{{}}."),
        "num_attention_heads": _heads(width),
        "max_position_embeddings": shapes[f"{prefix}embeddings.position_embedding.weight"][0],
        "hidden_act": act,
        "projection_dim": 768,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "model_type": "clip_text_model",
    }


def _open_clip_config(shapes: Shapes, prefix: str, with_projection: bool) -> dict:
    vocab, width = shapes[f"{prefix}token_embedding.weight"]
    layers = _count(shapes, f"{prefix}transformer.resblocks.{{}}.")
    if not with_projection and layers == 24:
        # diffusers drops OpenCLIP-H's last layer for SD 2.x (it uses the penultimate one)
        layers = 23
    projection = shapes.get(f"{prefix}text_projection", (width, width))
    return {
        "architectures": ["CLIPTextModelWithProjection" if with_projection else "CLIPTextModel"],
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": shapes[f"{prefix}transformer.resblocks.0.mlp.c_fc.weight"][0],
        "num_hidden_layers": layers,
        "num_attention_heads": _heads(width),
        "max_position_embeddings": shapes[f"{prefix}positional_embedding"][0],
        "hidden_act": "gelu",
        "projection_dim": projection[1],
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "model_type": "clip_text_model",
    }
