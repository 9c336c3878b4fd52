"""💥 with a segmentation preprocessor: the map of a tiny OneFormer folder through the same
annotator runner the jobs use, in ADE20K's colours; the Segmentation control type and its
default in the unit's choices."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from webui.model_manager.annotators import AnnotatorCache
from webui.model_manager.seg_palettes import ADE20K
from webui.model_manager.tiny_oneformer import save_tiny_oneformer
from webui.ui import controlnet_ui as cn


def test_the_preview_draws_the_segmentation_map(tmp_path):
    save_tiny_oneformer(tmp_path / "oneformer_ade20k_swin_large", seed=0)
    cache = AnnotatorCache(tmp_path)
    image = Image.new("RGB", (96, 64), "white")
    ImageDraw.Draw(image).rectangle((10, 10, 40, 50), fill="black")
    shown = cn._preview("seg_ofade20k", image, None, 64, -1, -1, annotate=cache.run)
    assert shown.size == (768, 512)  # the extension hides its resolution: 512
    colours = {tuple(int(v) for v in c) for c in np.asarray(shown).reshape(-1, 3)}
    assert colours <= set(ADE20K)
    assert cache.loaded() == ["oneformer_ade20k"]


def test_the_segmentation_type_picks_seg_ofade20k():
    assert "Segmentation" in [name for name, _, _ in cn.CONTROL_TYPES]
    assert cn._DEFAULTS["Segmentation"] == "oneformer_ade20k"
    assert cn.modules_of_type("Segmentation") == ["none", "oneformer_ade20k", "oneformer_coco"]
