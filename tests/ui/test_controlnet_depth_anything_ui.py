"""💥 with depth_anything: the map from a tiny Depth Anything file in the original layout,
through the annotator cache the UI is given; a file that does not fit is a message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from webui.model_manager.annotators import AnnotatorCache
from webui.model_manager.tiny_depth_anything import save_tiny_depth_anything
from webui.ui import controlnet_ui as cn
from webui.ui.common import InputError


def shapes() -> Image.Image:
    image = Image.new("RGB", (96, 64), "white")
    ImageDraw.Draw(image).rectangle((10, 10, 40, 50), fill="black")
    return image


def test_the_preview_shows_the_depth_map(tmp_path):
    save_tiny_depth_anything(tmp_path, "depth_anything", seed=2)
    shown = cn._preview("depth_anything", shapes(), None, 512, -1, -1,
                        annotate=AnnotatorCache(tmp_path).run)  # fmt: skip
    pixels = np.asarray(shown)
    assert shown.size == (768, 512) and pixels.min() == 0 and pixels.max() == 255


def test_a_file_that_does_not_fit_is_a_message(tmp_path):
    broken, _ = save_tiny_depth_anything(tmp_path, "depth_anything_v2", seed=2)
    state = torch.load(broken, weights_only=True)  # an 11-block ViT: no v2 encoder has that
    torch.save({k: v for k, v in state.items() if "blocks.11." not in k}, broken)
    with pytest.raises(InputError, match="depth_anything_v2_vitl.pth: a Depth Anything V2"):
        cn._preview("depth_anything_v2", shapes(), None, 512, -1, -1,
                    annotate=AnnotatorCache(tmp_path).run)  # fmt: skip
