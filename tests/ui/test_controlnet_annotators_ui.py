"""💥 with an annotator preprocessor: the map from the annotator runner, and a message
naming the file and the folder when its weights are missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from webui.model_manager.annotator_files import AnnotatorMissingError
from webui.ui import controlnet_ui as cn
from webui.ui.common import InputError


def test_the_preview_runs_an_annotator_through_the_runner():
    calls = []

    def annotate(module, image, res, a, b):
        calls.append((module, image.shape, res))
        return np.full((res, res, 3), 200, np.uint8)

    image = Image.new("RGB", (64, 64), "white")
    shown = np.asarray(cn._preview("softedge_hed", image, None, 64, -1, -1, annotate=annotate))
    assert calls == [("hed", (64, 64, 3), 64)] and shown.shape == (64, 64, 3)
    assert shown[0, 0, 0] == 200


def test_missing_weights_on_the_preview_are_a_message():
    folder = Path("/models/ControlNet/annotators")

    def annotate(module, image, res, a, b):
        raise AnnotatorMissingError("ControlNetHED.pth", folder, "download failed: offline")

    image = Image.new("RGB", (64, 64), "white")
    with pytest.raises(InputError, match="ControlNetHED.pth.*/models/ControlNet/annotators"):
        cn._preview("hed", image, None, 64, -1, -1, annotate=annotate)
    with pytest.raises(InputError, match="not available"):  # no runner: said, not a crash
        cn._preview("hed", image, None, 64, -1, -1)
    with pytest.raises(InputError, match="LaMa"):  # a refused one: its reason
        cn._preview("inpaint_only+lama", image, None, 64, -1, -1)
