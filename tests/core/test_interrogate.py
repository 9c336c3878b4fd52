"""The interrogate job in the worker's terms: the option "Keep models in VRAM" keeps the
loaded tagger between jobs (off: freed after each); a tags file that does not match the
model, or a file that is no model, is a user's error naming the file (not a bug)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.tiny_interrogate import save_tiny_deepbooru, save_tiny_wd14
from webui.core.interrogate import InterrogateParams, interrogate
from webui.core.progress import Progress
from webui.errors import UserError
from webui.model_manager.interrogate_files import GENERAL, deepbooru_files, tagger_files
from webui.model_manager.interrogators import InterrogatorCache
from webui.options import OPTION_DEFS

DEFAULTS = {d.key: d.default for d in OPTION_DEFS}
IMAGE = Image.new("RGB", (40, 24), (10, 200, 90))


def _opt(**changes):
    return lambda key: {**DEFAULTS, **changes}[key]


def test_keep_models_in_memory(tmp_path) -> None:
    folder = save_tiny_deepbooru(tmp_path / "torch_deepdanbooru", [("solo", 0.7)])
    params = InterrogateParams(IMAGE, "deepdanbooru", onnx=deepbooru_files(folder))
    cache = InterrogatorCache(torch.device("cpu"), torch.float32)
    result = interrogate(params, cache, _opt(), Progress())
    assert result.caption == "solo" and not cache._models  # freed: the default
    kept = interrogate(params, cache, _opt(interrogate_keep_models_in_memory=True), Progress())
    assert kept.caption == "solo" and len(cache._models) == 1
    (tagger,) = cache._models.values()
    interrogate(params, cache, _opt(interrogate_keep_models_in_memory=True), Progress())
    assert list(cache._models.values()) == [tagger]  # loaded once


def test_a_tags_file_that_does_not_match_the_model(tmp_path) -> None:
    folder = save_tiny_wd14(tmp_path / "wd", [("a", GENERAL, 0.5), ("b", GENERAL, 0.5)])
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n0,a,0,1\n")
    params = InterrogateParams(IMAGE, "wd", onnx=tagger_files(tmp_path, "wd"))
    cache = InterrogatorCache(torch.device("cpu"), torch.float32)
    with pytest.raises(UserError, match="gives 2 scores but selected_tags.csv lists 1 tags"):
        interrogate(params, cache, _opt(), Progress())
    (folder / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match=f"cannot load {folder / 'model.onnx'}"):
        interrogate(params, cache, _opt(), Progress())
