"""A tiny random OneFormer saved as a hub folder, in the layout users download.

transformers' real classes (`OneFormerForUniversalSegmentation` with a Swin backbone) at a
few thousand weights each layer, and the image processor's `preprocessor_config.json` as
shi-labs' repositories have it (including `class_info_file`, which the loader must drop).
For tests and demos; the map it draws is random but follows its argmax like the real one.

This module must never import a UI library.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_tiny_oneformer(target: Path, num_labels: int = 150, seed: int = 0,
                        size: int = 64) -> Path:  # fmt: skip
    """A random OneFormer with `num_labels` classes in `target` (config.json,
    preprocessor_config.json, model.safetensors); images are resized to `size`."""
    from transformers import (
        OneFormerConfig,
        OneFormerForUniversalSegmentation,
        OneFormerImageProcessor,
        SwinConfig,
    )

    swin = SwinConfig(image_size=size, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                      num_heads=[1, 1, 1, 1], window_size=4,
                      out_features=["stage1", "stage2", "stage3", "stage4"])  # fmt: skip
    labels = {i: f"class {i}" for i in range(num_labels)}
    config = OneFormerConfig(
        backbone_config=swin, num_queries=8, hidden_dim=32, conv_dim=32, mask_dim=32,
        encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1, decoder_layers=2,
        num_attention_heads=2, text_encoder_width=32, text_encoder_num_layers=1,
        text_encoder_proj_layers=1, query_dec_layers=1, init_std=1.0,
        id2label=labels, label2id={v: k for k, v in labels.items()},
    )  # fmt: skip
    torch.manual_seed(seed)
    model = OneFormerForUniversalSegmentation(config).eval()
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    processor = OneFormerImageProcessor(size={"shortest_edge": size, "longest_edge": 4 * size},
                                        num_labels=num_labels)  # fmt: skip
    processor.save_pretrained(target)
    settings = json.loads((target / "preprocessor_config.json").read_text(encoding="utf-8"))
    settings.update(class_info_file="ade20k_panoptic.json", num_text=8)  # as shi-labs' repos
    (target / "preprocessor_config.json").write_text(json.dumps(settings, indent=2))
    return target
