"""Tiny interrogate models in the files users have, built at test time.

- BLIP: a transformers `BlipForConditionalGeneration` with a tiny config, saved with its
  `BlipProcessor` (a tiny BERT vocabulary) as `save_pretrained` writes it;
- CLIP: a transformers `CLIPModel` with a tiny config, saved with its `CLIPProcessor`
  (the real CLIP vocabulary, shipped in the project);
- an ONNX tagger written with onnx helpers: NHWC float input -> mean colour -> a linear
  layer -> sigmoid, one score per tag, with `selected_tags.csv` (WD14) or `tags.txt`
  (DeepDanbooru). With zero weights a tag's score is sigmoid(bias): the test picks it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "cat", "dog", "on",
          "the", "red", "blue", "sofa", "picture", "of"]  # fmt: skip
_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               image_size=32, patch_size=8)  # fmt: skip


def save_tiny_blip(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(_WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    text = dict(vocab_size=len(_WORDS), hidden_size=16, intermediate_size=32,
                num_hidden_layers=1, num_attention_heads=2, encoder_hidden_size=16,
                bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3)  # fmt: skip
    config = BlipConfig(text_config=text, vision_config=_VISION, projection_dim=16)
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from webui.model_manager.tokenizers import clip_tokenizer

    text = dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77)  # fmt: skip
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=_VISION, projection_dim=16))
    model.eval().save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer())
    processor.save_pretrained(folder)
    return folder


def save_tiny_onnx_tagger(path: Path, scores: list[float], side: int) -> Path:
    """An ONNX model: [1, side, side, 3] -> [1, len(scores)], constant `scores`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    count = len(scores)
    bias = np.array([math.log(p / (1 - p)) for p in scores], dtype=np.float32)
    weight = np.zeros((3, count), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "weight"], ["linear"]),
            helper.make_node("Add", ["linear", "bias"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ],
        "tiny_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", side, side, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", count])],
        [
            numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
            numpy_helper.from_array(weight, "weight"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def save_tiny_wd14(folder: Path, tags: list[tuple[str, int, float]]) -> Path:
    """`folder`/model.onnx and selected_tags.csv for (name, category, score) tags."""
    save_tiny_onnx_tagger(folder / "model.onnx", [t[2] for t in tags], side=32)
    with (folder / "selected_tags.csv").open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category, _score) in enumerate(tags):
            writer.writerow([index, name, category, 100])
    return folder


def save_tiny_deepbooru(folder: Path, tags: list[tuple[str, float]]) -> Path:
    """`folder`/model.onnx and tags.txt for (name, score) tags."""
    save_tiny_onnx_tagger(folder / "model.onnx", [t[1] for t in tags], side=32)
    (folder / "tags.txt").write_text("\n".join(t[0] for t in tags) + "\n", encoding="utf-8")
    return folder
