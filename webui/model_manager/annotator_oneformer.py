"""OneFormer semantic segmentation: the maps of `seg_ofade20k` and `seg_ofcoco`.

The network is transformers' `OneFormerForUniversalSegmentation` with its
`OneFormerProcessor` (task "semantic"), read from a hub folder of
`models/ControlNet/annotators` (`annotator_folders.py`: `oneformer_ade20k_swin_large`,
`oneformer_coco_swin_large`). The processor is built here from the folder's
`preprocessor_config.json` without its `class_info_file` (class names, which transformers
would fetch from another hub repository and semantic inference does not use), and with the
project's CLIP tokenizer (the task text "the task is semantic" is all it encodes).

As sd-webui-controlnet: the image is resized to the processor resolution (shorter side;
the extension hides the slider, so 512), segmented, and each pixel takes its class's
colour (ADE20K's 150 or COCO panoptic's 133, `seg_palettes.py`); a class the palette lacks
is black. The extension's detectron2 visualizer also draws thin off-white outlines around
regions; this map has plain colours, like the annotator ControlNet's seg models were
trained with (mmseg's palette maps).

This module must never import a UI library.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..errors import UserError
from .seg_palettes import Colour
from .tokenizers import clip_tokenizer

log = logging.getLogger(__name__)
# keys of a hub preprocessor_config.json that are not image-processor settings, or that
# would make transformers download class names from shi-labs/oneformer_demo
_NOT_SETTINGS = ("class_info_file", "repo_path", "image_processor_type", "processor_class")


class OneFormerError(UserError):
    """A OneFormer folder that cannot be read as one."""


def colour_map(labels: np.ndarray, palette: tuple[Colour, ...]) -> np.ndarray:
    """RGB uint8: each label's palette colour; labels past the palette are black."""
    colours = np.zeros((max(len(palette), int(labels.max(initial=0)) + 1), 3), np.uint8)
    colours[: len(palette)] = np.asarray(palette, np.uint8)
    return colours[labels]


def _resize_short_side(image: np.ndarray, res: int) -> np.ndarray:
    """The image with its shorter side at `res` (the sizes `annotators._rgb_at` expects)."""
    h, w = image.shape[:2]
    k = res / min(h, w)
    size = (max(int(round(w * k)), 1), max(int(round(h * k)), 1))
    if (size[0], size[1]) == (w, h):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)


class OneFormerSegmenter:
    """A OneFormer network, its processor and the palette of its classes."""

    def __init__(self, model: torch.nn.Module, processor: Any, palette: tuple[Colour, ...]):
        self.model, self.processor, self.palette = model, processor, palette

    def labels(self, image: np.ndarray) -> np.ndarray:
        """The class id of every pixel of an RGB uint8 image (int64, the image's size)."""
        inputs = self.processor(images=image, task_inputs=["semantic"], return_tensors="pt")
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.no_grad():
            outputs = self.model(**inputs)
        size = [tuple(image.shape[:2])]
        labels = self.processor.post_process_semantic_segmentation(outputs, target_sizes=size)
        return labels[0].cpu().numpy().astype(np.int64)

    def __call__(self, image: np.ndarray, res: int) -> np.ndarray:
        return colour_map(self.labels(_resize_short_side(image, res)), self.palette)


def _processor(path: Path) -> Any:
    from transformers import OneFormerImageProcessor, OneFormerProcessor

    settings = json.loads((path / "preprocessor_config.json").read_text(encoding="utf-8"))
    for key in _NOT_SETTINGS:
        settings.pop(key, None)
    return OneFormerProcessor(image_processor=OneFormerImageProcessor.from_dict(settings),
                              tokenizer=clip_tokenizer())  # fmt: skip


def load_segmenter(path: Path, palette: tuple[Colour, ...]) -> OneFormerSegmenter:
    """The OneFormer of a hub folder (config.json, preprocessor_config.json, weights)."""
    from transformers import OneFormerForUniversalSegmentation

    log.info("Loading OneFormer from %s", path)
    try:
        processor = _processor(path)
        model, info = OneFormerForUniversalSegmentation.from_pretrained(
            path, local_files_only=True, output_loading_info=True, is_training=False
        )  # inference: no text mapper (it would want class-name texts)
        absent = [*(k for k in info.get("missing_keys", ()) if not k.startswith("criterion.")),
                  *info.get("mismatched_keys", ())]  # fmt: skip
        if absent:  # transformers would leave those weights random (the loss's: unused)
            raise ValueError(f"its weights lack {len(absent)} of the network's tensors "
                             f"({', '.join(map(str, list(absent)[:3]))}, ...)")  # fmt: skip
    except Exception as exc:  # a user's folder: whatever does not build is named
        said = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise OneFormerError(f"annotator folder {path} is not a OneFormer model "
                             f"(transformers' layout): {said}") from None  # fmt: skip
    return OneFormerSegmenter(model.float().eval(), processor, palette)


def builder(folder_name: str, palette: tuple[Colour, ...]) -> Callable[[dict], Any]:
    """The annotator cache's build function: paths (name -> path) -> segmenter."""
    return lambda paths: load_segmenter(paths[folder_name], palette)
