"""Depth Anything (v1 and v2): ControlNet's `depth_anything` and `depth_anything_v2`.

The files are the original repositories' state dicts (LiheYoung/Depth-Anything's
`depth_anything_vitl14.pth`, depth-anything/Depth-Anything-V2-Large's
`depth_anything_v2_vitl.pth` or its `.safetensors` twin): a DINOv2 ViT under
`pretrained.*` (fused `attn.qkv`, `ls1.gamma`, ...) and the DPT head under `depth_head.*`.
The network is transformers' `DepthAnythingForDepthEstimation`, built from a config read
off the tensors (width, depth, patch and position grid of the ViT; the neck, fusion and
head widths), given those weights under its own names by `hf_state` (the mapping of
transformers' conversion script, written here). v1 and v2 differ only in which ViT
layers feed the head (v1: the last four; v2: per encoder, ViT-S/B `[2, 5, 8, 11]`, ViT-L
`[4, 11, 17, 23]`); the file's module says which. The position embeddings are resized
as the original DINOv2 code does it (bicubic by a scale factor with its 0.1 offset),
which transformers' Dinov2 does by target size: `_dinov2_positions`.

`DepthAnythingDetector` makes the map as sd-webui-controlnet does: the image's shorter
side at the processor resolution (512: the extension hides the slider), edge-padded to
a multiple of 64; 518-pixel lower bound, multiple of 14, aspect kept (cubic); ImageNet
normalisation; the depth resized back (bilinear), min-max to 0-255, padding removed.
The network gets the image as RGB, as the original repositories give it (the extension
passes its RGB image through a BGR-to-RGB swap: the one thing not copied).

This module must never import a UI library.
"""

from __future__ import annotations

import math
import re
import types

import cv2
import numpy as np
import torch

from ..errors import UserError

_MEAN, _STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# v2: the ViT blocks (0-based) whose outputs feed the head, by the number of blocks
_V2_LAYERS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23)}
_RULES = tuple((re.compile(pattern), new) for pattern, new in (
    (r"pretrained\.cls_token", "backbone.embeddings.cls_token"),
    (r"pretrained\.mask_token", "backbone.embeddings.mask_token"),
    (r"pretrained\.pos_embed", "backbone.embeddings.position_embeddings"),
    (r"pretrained\.patch_embed\.proj\.(\w+)", r"backbone.embeddings.patch_embeddings.projection.\1"),
    (r"pretrained\.norm\.(\w+)", r"backbone.layernorm.\1"),
    (r"pretrained\.blocks\.(\d+)\.attn\.proj\.(\w+)", r"backbone.encoder.layer.\1.attention.o_proj.\2"),
    (r"pretrained\.blocks\.(\d+)\.ls([12])\.gamma", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
    (r"pretrained\.blocks\.(\d+)\.(norm[12]|mlp\.fc[12])\.(\w+)", r"backbone.encoder.layer.\1.\2.\3"),
    (r"depth_head\.projects\.(\d)\.(\w+)", r"neck.reassemble_stage.layers.\1.projection.\2"),
    (r"depth_head\.resize_layers\.(\d)\.(\w+)", r"neck.reassemble_stage.layers.\1.resize.\2"),
    (r"depth_head\.scratch\.layer(\d)_rn\.weight", lambda m: f"neck.convs.{int(m[1]) - 1}.weight"),
    (r"depth_head\.scratch\.refinenet(\d)\.out_conv\.(\w+)",
     lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection.{m[2]}"),
    (r"depth_head\.scratch\.refinenet(\d)\.resConfUnit(\d)\.conv(\d)\.(\w+)",
     lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}.{m[4]}"),
    (r"depth_head\.scratch\.output_conv1\.(\w+)", r"head.conv1.\1"),
    (r"depth_head\.scratch\.output_conv2\.0\.(\w+)", r"head.conv2.\1"),
    (r"depth_head\.scratch\.output_conv2\.2\.(\w+)", r"head.conv3.\1"),
))  # fmt: skip
_QKV = re.compile(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(\w+)")


class DepthAnythingError(UserError):
    """A file that is not a Depth Anything checkpoint this server can run."""


def hf_name(key: str) -> str | None:
    """The transformers name of an original key (None: not a known key)."""
    for pattern, new in _RULES:
        if pattern.fullmatch(key):
            return pattern.sub(new, key)
    return None


def hf_state(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The original state dict under transformers' names (`qkv` split in three)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if found := _QKV.fullmatch(key):
            prefix = f"backbone.encoder.layer.{found[1]}.attention"
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3), strict=True):
                out[f"{prefix}.{part}.{found[2]}"] = chunk
        elif (new := hf_name(key)) is not None:
            out[new] = value
        else:
            unknown.append(key)
    if unknown:
        raise DepthAnythingError(f"{name} is not a Depth Anything checkpoint: unknown keys "
                                 f"{', '.join(sorted(unknown)[:5])}")  # fmt: skip
    return out


def _shape(state: dict, key: str, name: str) -> tuple[int, ...]:
    if key not in state:
        raise DepthAnythingError(f"{name} is not a Depth Anything checkpoint (no {key})")
    return tuple(state[key].shape)


def _layers(version: int, depth: int, name: str) -> list[int]:
    """transformers' out_indices (1-based: 0 is the embeddings) of the head's ViT blocks."""
    if version == 1:
        return list(range(depth - 3, depth + 1))
    if depth not in _V2_LAYERS:
        raise DepthAnythingError(f"{name}: a Depth Anything V2 ViT has 12 (ViT-S/B) or 24 "
                                 f"(ViT-L) blocks, this one {depth}")  # fmt: skip
    return [i + 1 for i in _V2_LAYERS[depth]]


def config_from_state(state: dict[str, torch.Tensor], version: int, name: str):
    """transformers' DepthAnythingConfig of an original state dict."""
    from transformers import DepthAnythingConfig, Dinov2Config

    width, _, patch, _ = _shape(state, "pretrained.patch_embed.proj.weight", name)
    positions = _shape(state, "pretrained.pos_embed", name)[1] - 1
    depth = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("pretrained.blocks.")),
                    default=-1)  # fmt: skip
    if any(".mlp.w12." in k for k in state) or any("readout_projects" in k for k in state):
        raise DepthAnythingError(f"{name}: a ViT-G (SwiGLU) or class-token head is not "
                                 "supported (no such Depth Anything file is published)")  # fmt: skip
    hidden = _shape(state, "pretrained.blocks.0.mlp.fc1.weight", name)[0]
    backbone = Dinov2Config(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=max(width // 64, 1),
        mlp_ratio=hidden // width, patch_size=patch, image_size=math.isqrt(positions) * patch,
        out_indices=_layers(version, depth, name), apply_layernorm=True,
        reshape_hidden_states=False,
    )  # fmt: skip
    head = "depth_head.scratch."
    return DepthAnythingConfig(
        backbone_config=backbone, patch_size=patch, reassemble_hidden_size=width,
        neck_hidden_sizes=[_shape(state, f"depth_head.projects.{i}.weight", name)[0]
                           for i in range(4)],
        fusion_hidden_size=_shape(state, f"{head}layer1_rn.weight", name)[0],
        head_hidden_size=_shape(state, f"{head}output_conv2.0.weight", name)[0],
    )  # fmt: skip


def _dinov2_positions(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINOv2's own resize of the position embeddings (scale factor, 0.1 offset)."""
    table = self.position_embeddings
    positions = table.shape[1] - 1
    rows, cols = height // self.patch_size, width // self.patch_size
    if embeddings.shape[1] - 1 == positions and height == width:
        return table
    side, dim = math.sqrt(positions), table.shape[-1]
    grid = table[:, 1:].float().reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(
        grid, scale_factor=((rows + 0.1) / side, (cols + 0.1) / side), mode="bicubic",
        antialias=False,
    )  # fmt: skip
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((table[:, :1].float(), grid), dim=1).to(table.dtype)


def build_model(state: dict[str, torch.Tensor], version: int, name: str) -> torch.nn.Module:
    """transformers' DepthAnythingForDepthEstimation with the weights of an original file."""
    from transformers import DepthAnythingForDepthEstimation

    config = config_from_state(state, version, name)
    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(config)
    try:
        model.load_state_dict(hf_state(state, name), strict=True, assign=True)
    except RuntimeError as exc:
        said = " ".join(str(exc).split())[:300]
        raise DepthAnythingError(f"annotator weights {name} do not fit Depth Anything: {said}"
                                 ) from None  # fmt: skip
    embeddings = model.backbone.embeddings
    embeddings.interpolate_pos_encoding = types.MethodType(_dinov2_positions, embeddings)
    return model.float().eval()


def _net_size(height: int, width: int, side: int = 518, multiple: int = 14) -> tuple[int, int]:
    """The original `Resize` (lower bound, aspect kept, multiple of 14): (height, width)."""
    scale = max(side / height, side / width)

    def fit(x: float) -> int:
        y = int(np.round(x / multiple) * multiple)
        return y if y >= side else int(np.ceil(x / multiple) * multiple)

    return fit(scale * height), fit(scale * width)


def _padded(image: np.ndarray, res: int) -> np.ndarray:
    """The extension's resize_image_with_pad: shorter side at `res`, edge-padded to 64."""
    h, w = image.shape[:2]
    k = res / min(h, w)
    size = (int(np.round(w * k)), int(np.round(h * k)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    pad_h, pad_w = -size[1] % 64, -size[0] % 64
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")


class DepthAnythingDetector:
    """The depth map of an RGB uint8 image, as sd-webui-controlnet makes it."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def net_input(self, image: np.ndarray) -> torch.Tensor:
        """The network's input: 518 lower bound, multiple of 14, ImageNet-normalised."""
        height, width = _net_size(*image.shape[:2])
        scaled = cv2.resize(image / 255.0, (width, height), interpolation=cv2.INTER_CUBIC)
        scaled = (scaled - _MEAN) / _STD
        return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1))).float()[None]

    def __call__(self, image: np.ndarray, res: int) -> np.ndarray:
        h, w = image.shape[:2]
        padded = _padded(image, res)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            depth = self.model(self.net_input(padded).to(device)).predicted_depth
            depth = torch.nn.functional.interpolate(
                depth[None], padded.shape[:2], mode="bilinear", align_corners=False
            )[0, 0]  # fmt: skip
        low, high = depth.min(), depth.max()
        if float(high - low) <= 0:  # a flat map (the extension would divide by zero)
            depth = torch.zeros_like(depth)
        else:
            depth = (depth - low) / (high - low) * 255.0
        out = depth.cpu().numpy().astype(np.uint8)
        return out[: int(np.round(h * res / min(h, w))), : int(np.round(w * res / min(h, w)))]


def load_detector(state: dict[str, torch.Tensor], name: str, version: int) -> DepthAnythingDetector:
    """The detector of an original Depth Anything state dict (file `name`)."""
    return DepthAnythingDetector(build_model(state, version, name))
