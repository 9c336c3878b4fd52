"""Tiny random-weight Depth Anything files for tests, in the original repositories' layout.

`tiny_depth_anything(version)` is transformers' `DepthAnythingForDepthEstimation` with a
small DINOv2 (width 32, one head, 12 blocks: the block count of ViT-S/B, so the v2 layer
choice applies) and a small DPT head, with seeded random weights (the layer scales and
norms too, so a wrong mapping shows). `original_state(model)` writes its weights under the
original names (`pretrained.*` with fused `qkv`, `depth_head.*`): the inverse of
`annotator_depth_anything.hf_state`, spelled out here on its own. `save_tiny_depth_anything`
saves that as the `.pth` users have (torch.save of the state dict) and, when asked, the
`.safetensors` twin.

This module must never import a UI library.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .annotator_files import FILES

_HEAD = {"head.conv1": "depth_head.scratch.output_conv1",
         "head.conv2": "depth_head.scratch.output_conv2.0",
         "head.conv3": "depth_head.scratch.output_conv2.2"}  # fmt: skip


def tiny_depth_anything(version: int, seed: int = 0) -> torch.nn.Module:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    layers = [9, 10, 11, 12] if version == 1 else [3, 6, 9, 12]
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=12, num_attention_heads=1,
                            image_size=518, patch_size=14, out_indices=layers,
                            reshape_hidden_states=False)  # fmt: skip
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
                                 head_hidden_size=32)  # fmt: skip
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("lambda1", "norm1.weight", "norm2.weight", "layernorm.weight")):
                tensor.copy_(1 + 0.2 * torch.randn_like(tensor))
            elif name.endswith("bias") or "token" in name or "position" in name:
                tensor.copy_(0.1 * torch.randn_like(tensor))
            else:  # weights at a scale that keeps the signal (the depth must vary)
                tensor.copy_(torch.randn_like(tensor) / tensor[0].numel() ** 0.5)
        model.head.conv3.bias.fill_(0.5)  # above the final ReLU: a map, not zeros
    return model


def _block(rest: str) -> str:
    rest = rest.replace("attention.o_proj", "attn.proj")
    return rest.replace("layer_scale1.lambda1", "ls1.gamma").replace(
        "layer_scale2.lambda1", "ls2.gamma"
    )


def _neck(name: str) -> str:
    parts = name.split(".")
    if name.startswith("neck.reassemble_stage."):  # layers.i.projection / .resize
        kind = "projects" if parts[4] == "projection" else "resize_layers"
        return f"depth_head.{kind}.{parts[3]}.{parts[5]}"
    if name.startswith("neck.convs."):
        return f"depth_head.scratch.layer{int(parts[2]) + 1}_rn.weight"
    fusion = f"depth_head.scratch.refinenet{4 - int(parts[3])}"  # neck.fusion_stage.layers.j
    if parts[4] == "projection":
        return f"{fusion}.out_conv.{parts[5]}"
    unit, conv = parts[4][-1], parts[5][-1]  # residual_layerK.convolutionJ
    return f"{fusion}.resConfUnit{unit}.conv{conv}.{parts[6]}"


def _original_name(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    if stem in _HEAD:
        return f"{_HEAD[stem]}.{name.rsplit('.', 1)[1]}"
    if name.startswith("neck."):
        return _neck(name)
    fixed = {"backbone.embeddings.cls_token": "pretrained.cls_token",
             "backbone.embeddings.mask_token": "pretrained.mask_token",
             "backbone.embeddings.position_embeddings": "pretrained.pos_embed"}  # fmt: skip
    if name in fixed:
        return fixed[name]
    name = name.replace("backbone.embeddings.patch_embeddings.projection.",
                        "pretrained.patch_embed.proj.")  # fmt: skip
    name = name.replace("backbone.layernorm.", "pretrained.norm.")
    if name.startswith("backbone.encoder.layer."):
        return "pretrained.blocks." + _block(name.removeprefix("backbone.encoder.layer."))
    return name


def original_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under the original repositories' names, `qkv` fused."""
    hf = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for name in [k for k in hf if ".attention.q_proj." in k]:
        layer, kind = name.split(".")[3], name.rsplit(".", 1)[1]
        parts = [hf.pop(name.replace("q_proj", p)) for p in ("q_proj", "k_proj", "v_proj")]
        state[f"pretrained.blocks.{layer}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    for name, tensor in hf.items():
        state[_original_name(name)] = tensor
    return state


def save_tiny_depth_anything(folder: Path, module: str, seed: int = 0,
                             safetensors: bool = False) -> tuple[Path, torch.nn.Module]:  # fmt: skip
    """The module's file (`depth_anything` / `depth_anything_v2`) in the original layout;
    its path and the transformers model it was written from."""
    version = 2 if module == "depth_anything_v2" else 1
    model = tiny_depth_anything(version, seed)
    state = original_state(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILES[module][0]
    if safetensors:
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path, model
