"""The interrogate service's names and messages, with files but no model loaded: a missing
file is named with its folder, an unknown model name lists the known ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from webui.options import Options
from webui.services.errors import RequestError
from webui.services.interrogate import InterrogateService

IMAGE = Image.new("RGB", (8, 8))


def _service(models: Path) -> InterrogateService:
    return InterrogateService(jobs=None, models_dir=models, options=Options(path=None))  # type: ignore[arg-type]


def _message(service: InterrogateService, model: str) -> str:
    with pytest.raises(RequestError) as caught:
        service.params(IMAGE, model)
    assert caught.value.loc == ("model",)
    return caught.value.message


def test_missing_files_are_named_with_their_folder(tmp_path) -> None:
    service = _service(tmp_path)
    interrogate, deepbooru = tmp_path / "interrogate", tmp_path / "torch_deepdanbooru"
    message = _message(service, "clip")
    assert "BLIP model folder" in message and str(interrogate) in message
    (interrogate / "blip").mkdir(parents=True)
    (interrogate / "blip" / "config.json").write_text('{"model_type": "blip"}')
    message = _message(service, "clip")
    assert "CLIP model folder" in message and str(interrogate) in message

    message = _message(service, "deepdanbooru")
    assert "model.onnx" in message and str(deepbooru) in message
    deepbooru.mkdir()
    (deepbooru / "model-resnet_custom_v3.pt").write_bytes(b"A1111")
    assert "A1111's state dict" in _message(service, "deepdanbooru")
    (deepbooru / "model.onnx").write_bytes(b"onnx")
    message = _message(service, "deepdanbooru")
    assert "tags.txt" in message and str(deepbooru) in message

    message = _message(service, "wd14")
    assert "selected_tags.csv" in message and str(interrogate) in message


def test_taggers_are_folders_with_a_model_and_tags(tmp_path) -> None:
    tagger = tmp_path / "interrogate" / "wd-v1-4-vit-tagger"
    tagger.mkdir(parents=True)
    (tagger / "model.onnx").write_bytes(b"onnx")
    service = _service(tmp_path)
    assert "unknown model 'wd-v1-4-vit-tagger'" in _message(service, "wd-v1-4-vit-tagger")
    (tagger / "selected_tags.csv").write_text("tag_id,name,category,count\n")
    assert service.models() == ["clip", "deepdanbooru", "wd14", "wd-v1-4-vit-tagger"]
    params = service.params(IMAGE, "wd14")
    assert params.model == "wd-v1-4-vit-tagger" and params.onnx.model == tagger / "model.onnx"
    for name in ("../interrogate", "BLIP-2", ""):
        assert "unknown model" in _message(service, name)
