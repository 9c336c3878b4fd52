"""Identify a checkpoint's family and architecture from its tensors, not its file name.

Input is a mapping of tensor name -> shape (read from a file header, no weights loaded).
Output is a `ModelSpec`: the family (SD 1.x, SD 2.x, SDXL base, each possibly an inpainting
variant) and the diffusers config of every component, with every size that the tensors
determine taken from the tensors. Sizes that weights cannot tell (attention head counts,
norm groups) follow the family's published convention.

Which families exist is not decided here: `identify` asks the families the composition
root passes in (`ModelFamily`, implemented by `webui.core.families`), in order, and each
recognises its own checkpoints with the generic readers below (LDM-layout UNet, VAE and
CLIP/OpenCLIP text encoder configs from shapes).

This module must never load weights, touch the network or import a UI library, and
never import `webui.core` (the families come in as arguments).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import UserError

UNET = "model.diffusion_model."
VAE = "first_stage_model."

Shapes = dict[str, tuple[int, ...]]


class UnsupportedModelError(ValueError, UserError):
    """The file is not a Stable Diffusion checkpoint this program can load."""


@dataclass(frozen=True)
class ModelSpec:
    family: str  # the family's name: "sd1" | "sd2" | "sdxl" ...
    family_label: str  # "SD 1.x"
    pipeline_class: str  # the diffusers pipeline that loads it (txt2img, or its inpainting one)
    inpainting: bool
    prediction_type: str | None  # "epsilon", "v_prediction", or None when unknown from keys
    unet: dict = field(repr=False)
    vae: dict = field(repr=False)
    text_encoders: tuple[dict, ...] = field(repr=False)
    # components a partial file (a FLUX transformer alone) needs from separate module files
    missing: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        text = self.family_label
        if self.inpainting:
            text += " inpainting"
        if self.prediction_type == "v_prediction":
            text += " (v-prediction)"
        return text


class ModelFamily(Protocol):
    """What the model manager needs from a family (`webui.core.families.base.Family`)."""

    name: str
    medvram_sdxl: bool  # --medvram-sdxl offloads models of this family
    folder_classes: frozenset[str]  # diffusers pipeline classes of its folders
    folder_kwargs: dict[str, Any]  # extra from_pretrained kwargs for those folders

    def spec_from_shapes(self, shapes: Shapes) -> ModelSpec | None:
        """The spec of a single file of this family, None when it is not one."""

    def spec_from_pipeline(self, pipe: Any) -> ModelSpec | None:
        """The spec of a pipeline loaded from a diffusers folder, None when not this family."""

    def config_files(self, spec: ModelSpec) -> dict[str, dict]:
        """The diffusers config folder for `from_single_file(config=...)`: path -> JSON."""

    def tokenizers(self, spec: ModelSpec) -> dict[str, Any]:
        """Tokenizers built offline, as `from_single_file` keyword arguments."""

    def check_mode(self, mode: str) -> None:
        """Raise a UserError when the family cannot run `mode` ("txt2img", "img2img")."""

    def sampler(self, name: str | None, schedule: str | None) -> Any:
        """The family's sampler choice; a UserError for one it cannot run."""


def identify(shapes: Shapes, families: Sequence[ModelFamily]) -> ModelSpec:
    """Return the spec of a single-file checkpoint: a transformer family's own layout
    (`transformer_layout` families are asked first), else the LDM (A1111) layout."""
    for family in families:
        if getattr(family, "transformer_layout", False):
            spec = family.spec_from_shapes(shapes)
            if spec is not None:
                return spec
    if f"{UNET}input_blocks.0.0.weight" not in shapes:
        raise UnsupportedModelError(
            "not a Stable Diffusion checkpoint: no UNet tensors (model.diffusion_model.*) found"
        )
    if f"{VAE}decoder.conv_out.weight" not in shapes:
        raise UnsupportedModelError("checkpoint has no VAE (first_stage_model.*) tensors")
    for family in families:
        if getattr(family, "transformer_layout", False):
            continue
        spec = family.spec_from_shapes(shapes)
        if spec is not None:
            return spec
    raise UnsupportedModelError("checkpoint has no text encoder this program knows (CLIP/OpenCLIP)")


def family_named(families: Sequence[ModelFamily], name: str) -> ModelFamily:
    for family in families:
        if family.name == name:
            return family
    raise LookupError(f"no model family {name!r}")


def check_context_width(unet: dict, width: int) -> None:
    """The UNet's cross-attention must take what the text encoders give."""
    if unet["cross_attention_dim"] != width:
        raise UnsupportedModelError(
            f"UNet cross-attention width {unet['cross_attention_dim']} does not match "
            f"the text encoder width {width}"
        )


def count(shapes: Shapes, pattern: str) -> int:
    """Number of distinct indices N for which some key matches `pattern` with {} -> N."""
    regex = re.compile(re.escape(pattern).replace(r"\{\}", r"(\d+)"))
    found = {int(m.group(1)) for key in shapes if (m := regex.match(key))}
    return max(found) + 1 if found else 0


def heads(width: int) -> int:
    """SD 2.x, SDXL and OpenCLIP use 64-wide attention heads."""
    return max(1, width // 64)


def unet_levels(shapes: Shapes) -> list[dict[str, int]]:
    """Per resolution level of an LDM UNet: channels, resnets and transformer depth."""
    levels: list[dict[str, int]] = []
    level = {"channels": 0, "res": 0, "depth": 0}
    for i in range(1, count(shapes, f"{UNET}input_blocks.{{}}.")):
        block = f"{UNET}input_blocks.{i}."
        if f"{block}0.op.weight" in shapes:  # downsample closes a level
            levels.append(level)
            level = {"channels": 0, "res": 0, "depth": 0}
            continue
        level["channels"] = shapes[f"{block}0.in_layers.2.weight"][0]
        level["res"] += 1
        level["depth"] = count(shapes, f"{block}1.transformer_blocks.{{}}.")
    levels.append(level)
    return levels


def unet_config(
    shapes: Shapes, *, sample_size: int, head_dim: int | None, layers_per_level: bool
) -> dict:
    """The diffusers UNet2DConditionModel config of an LDM UNet.

    `head_dim`: SD 1.x's fixed attention head dimension, or None for 64-wide heads per
    level; `layers_per_level`: write `transformer_layers_per_block` (SD 2.x and later)."""
    conv_in = shapes[f"{UNET}input_blocks.0.0.weight"]
    levels = unet_levels(shapes)
    first_attn = next(k for k in shapes if k.endswith("attn2.to_k.weight") and k.startswith(UNET))
    proj_in = next(k for k in shapes if k.startswith(UNET) and k.endswith(".proj_in.weight"))
    channels = [lv["channels"] for lv in levels]
    config = {
        "sample_size": sample_size,
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
        "attention_head_dim": head_dim if head_dim is not None else [heads(c) for c in channels],
    }
    if layers_per_level:
        config["transformer_layers_per_block"] = [max(1, lv["depth"]) for lv in levels]
    return config


def vae_config(
    shapes: Shapes, *, sample_size: int, scaling_factor: float, force_upcast: bool
) -> dict:
    n_levels = count(shapes, f"{VAE}encoder.down.{{}}.")
    channels = [shapes[f"{VAE}encoder.down.{i}.block.0.conv2.weight"][0] for i in range(n_levels)]
    return {
        "in_channels": shapes[f"{VAE}encoder.conv_in.weight"][1],
        "out_channels": shapes[f"{VAE}decoder.conv_out.weight"][0],
        "latent_channels": shapes[f"{VAE}post_quant_conv.weight"][0],
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * n_levels,
        "up_block_types": ["UpDecoderBlock2D"] * n_levels,
        "layers_per_block": count(shapes, f"{VAE}encoder.down.0.block.{{}}."),
        "norm_num_groups": 32,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
        "force_upcast": force_upcast,
    }


def hf_clip_config(shapes: Shapes, prefix: str, act: str) -> dict:
    """A text encoder stored in the transformers CLIP layout (OpenAI CLIP)."""
    vocab, width = shapes[f"{prefix}embeddings.token_embedding.weight"]
    return {
        "architectures": ["CLIPTextModel"],
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": shapes[f"{prefix}encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": count(shapes, f"{prefix}encoder.layers.{{}}."),
        "num_attention_heads": heads(width),
        "max_position_embeddings": shapes[f"{prefix}embeddings.position_embedding.weight"][0],
        "hidden_act": act,
        "projection_dim": 768,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "model_type": "clip_text_model",
    }


def open_clip_config(shapes: Shapes, prefix: str, with_projection: bool) -> dict:
    """A text encoder stored in the OpenCLIP layout (`transformer.resblocks.*`)."""
    vocab, width = shapes[f"{prefix}token_embedding.weight"]
    layers = count(shapes, f"{prefix}transformer.resblocks.{{}}.")
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
        "num_attention_heads": heads(width),
        "max_position_embeddings": shapes[f"{prefix}positional_embedding"][0],
        "hidden_act": "gelu",
        "projection_dim": projection[1],
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "model_type": "clip_text_model",
    }


def v_prediction_key(shapes: Shapes) -> str | None:
    """The prediction type "v_prediction" when the file has a `v_pred` key, else None."""
    return "v_prediction" if "v_pred" in shapes else None


def parts_message(file_name: str, model: str, missing: Sequence[str],
                  helps: dict[str, tuple[str, str, str]], extra: str = "") -> str:  # fmt: skip
    """What a partial file of `model` ("a FLUX", "an SD 3.5") lacks: for each missing part
    its description, file and folder (`helps`: part -> (what, file, folder)), `extra` after
    them, and where to choose them."""
    needs = "; ".join(f"{helps[n][0]} ({helps[n][1]} in models/{helps[n][2]})" for n in missing)
    return (
        f"{file_name} holds only part of {model} model: it needs {needs}{extra}. Put the file "
        'in that folder and choose it in "VAE / Text Encoder" (API: the '
        "forge_additional_modules option, e.g. in override_settings)."
    )


def rope_axes_of(head_dim: int, first: int, model: str) -> list[int]:
    """A DiT's rotary axes (time, height, width) of a `head_dim`-wide head whose time axis
    takes `first` channels and the two others the rest in halves."""
    side = (head_dim - first) // 2
    if first % 2 or side % 2 or first + 2 * side != head_dim:
        raise UnsupportedModelError(f"{model} head width {head_dim} cannot be split in rotary axes")
    return [first, side, side]
