"""OneFormer segmentation (seg_ofade20k, seg_ofcoco) from a tiny random OneFormer saved as
the hub folder users download: palette colours that follow the network's argmax, the
folder's download and the message when it is missing. Nothing goes to the network
(tests/conftest.py sets HF_HUB_OFFLINE: the processor would fail if it still fetched the
class names its preprocessor_config.json names)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from webui.model_manager.annotator_files import (
    AnnotatorMissingError,
    ensure_files,
    hub_download,
    missing_files,
)
from webui.model_manager.annotator_oneformer import OneFormerError, colour_map
from webui.model_manager.annotators import AnnotatorCache
from webui.model_manager.seg_palettes import ADE20K, COCO
from webui.model_manager.tiny_oneformer import save_tiny_oneformer

ADE, COCO_FOLDER = "oneformer_ade20k_swin_large", "oneformer_coco_swin_large"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ControlNet") / "annotators"
    save_tiny_oneformer(folder / ADE, num_labels=150, seed=0)
    save_tiny_oneformer(folder / COCO_FOLDER, num_labels=133, seed=1)
    return folder


def picture(height: int = 64, width: int = 96) -> np.ndarray:
    image = np.full((height, width, 3), 255, np.uint8)
    image[10:50, 20:60] = (20, 20, 20)
    image[30:60, 50:90] = (200, 40, 40)
    return image


def argmax_labels(path: Path, image: np.ndarray) -> np.ndarray:
    """The semantic argmax computed here from the network's outputs (class softmax without
    the no-object class, mask sigmoid, upsampled to the image)."""
    from transformers import (
        OneFormerForUniversalSegmentation,
        OneFormerImageProcessor,
        OneFormerProcessor,
    )

    from webui.model_manager.tokenizers import clip_tokenizer

    settings = json.loads((path / "preprocessor_config.json").read_text())
    processor = OneFormerProcessor(
        image_processor=OneFormerImageProcessor(size=settings["size"]),
        tokenizer=clip_tokenizer(),
    )
    model = OneFormerForUniversalSegmentation.from_pretrained(path).eval()
    inputs = processor(images=image, task_inputs=["semantic"], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    classes = out.class_queries_logits.softmax(-1)[..., :-1]
    scores = torch.einsum("bqc,bqhw->bchw", classes, out.masks_queries_logits.sigmoid())
    scores = torch.nn.functional.interpolate(scores, size=image.shape[:2], mode="bilinear")
    return scores[0].argmax(0).numpy()


def test_the_map_is_the_palette_colour_of_each_pixels_argmax(folder):
    cache = AnnotatorCache(folder, download=lambda *a: pytest.fail("nothing to download"))
    detected = cache.run("oneformer_ade20k", picture(), 64, 0, 0)
    assert detected.dtype == np.uint8 and detected.shape == (64, 96, 3)
    labels = argmax_labels(folder / ADE, picture())
    assert len(np.unique(labels)) >= 2  # the tiny net draws regions, not one flat colour
    assert (detected == np.asarray(ADE20K, np.uint8)[labels]).all()


def test_the_map_is_at_the_processor_resolution(folder):
    cache = AnnotatorCache(folder)
    detected = cache.run("oneformer_ade20k", picture(32, 48), -1, 0, 0)  # hidden slider: 512
    assert detected.shape == (512, 768, 3)
    assert {tuple(c) for c in detected.reshape(-1, 3)} <= set(ADE20K)


def test_coco_draws_cocos_colours(folder):
    detected = AnnotatorCache(folder).run("oneformer_coco", picture(), 64, 0, 0)
    labels = argmax_labels(folder / COCO_FOLDER, picture())
    assert (detected == np.asarray(COCO, np.uint8)[labels]).all()
    assert len(COCO) == 133 and len(ADE20K) == 150
    assert ADE20K[:3] == ((120, 120, 120), (180, 120, 120), (6, 230, 230))  # wall, building, sky
    assert COCO[0] == (220, 20, 60)  # person


def test_classes_past_the_palette_are_black():
    labels = np.array([[0, 2], [151, 0]])
    out = colour_map(labels, ((1, 2, 3), (4, 5, 6), (7, 8, 9)))
    assert out.tolist() == [[[1, 2, 3], [7, 8, 9]], [[0, 0, 0], [1, 2, 3]]]


def test_a_folder_without_weights_is_missing_and_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / ADE).mkdir()
    (tmp_path / ADE / "config.json").write_text("{}")
    assert missing_files(tmp_path, "oneformer_ade20k") == [ADE]
    with pytest.raises(AnnotatorMissingError) as caught:
        AnnotatorCache(tmp_path).run("oneformer_ade20k", picture(), 64, 0, 0)
    message = str(caught.value)
    assert ADE in message and str(tmp_path) in message
    assert "huggingface.co/shi-labs/oneformer_ade20k_swin_large" in message


def test_a_folder_that_is_not_a_oneformer_is_named(tmp_path, folder):
    broken = tmp_path / ADE
    broken.mkdir()
    for name in ("preprocessor_config.json", "model.safetensors"):
        (broken / name).write_bytes((folder / ADE / name).read_bytes())
    (broken / "config.json").write_text(json.dumps({"model_type": "oneformer", "hidden_dim": 7}))
    with pytest.raises(OneFormerError, match=f"{ADE} is not a OneFormer"):
        AnnotatorCache(tmp_path).run("oneformer_ade20k", picture(), 64, 0, 0)


def test_the_folder_download_takes_the_bin_when_there_are_no_safetensors(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []

    def fake_hub(repo, name, local_dir, tqdm_class=None):
        asked.append((repo, name))
        if name == "model.safetensors":
            raise EntryNotFoundError("no such file")
        if tqdm_class is not None:
            with tqdm_class(total=2 << 20, disable=True) as bar:
                bar.update(2 << 20)
        path = Path(local_dir) / name
        path.write_text(name)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub)
    said: list[str] = []
    found = ensure_files(tmp_path, "oneformer_coco", download=hub_download, report=said.append)
    repo = "shi-labs/oneformer_coco_swin_large"
    assert asked == [(repo, "config.json"), (repo, "preprocessor_config.json"),
                     (repo, "model.safetensors"), (repo, "pytorch_model.bin")]  # fmt: skip
    target = tmp_path / COCO_FOLDER
    assert found == {COCO_FOLDER: target}
    assert sorted(p.name for p in target.iterdir()) == [
        "config.json", "preprocessor_config.json", "pytorch_model.bin"]  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == [COCO_FOLDER]  # no temporary leftovers
    assert said == [f"Downloading {COCO_FOLDER} from {repo}",
                    f"Downloading {COCO_FOLDER} from {repo}: 100% of 2 MB"]  # fmt: skip
    asked.clear()
    ensure_files(tmp_path, "oneformer_coco", download=hub_download)
    assert asked == []  # complete: nothing fetched again


def test_weights_of_another_oneformer_are_refused_not_left_random(tmp_path, folder):
    other = tmp_path / ADE
    other.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (other / name).write_bytes((folder / ADE / name).read_bytes())
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / ADE / "model.safetensors"))
    save_file({k: v for k, v in state.items() if "class_embed" not in k},
              str(other / "model.safetensors"))  # fmt: skip
    with pytest.raises(OneFormerError, match="lack"):
        AnnotatorCache(tmp_path).run("oneformer_ade20k", picture(), 64, 0, 0)


def test_a_checkpoint_without_the_training_loss_loads(tmp_path, folder):
    from safetensors.torch import load_file, save_file

    lean = tmp_path / ADE
    lean.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (lean / name).write_bytes((folder / ADE / name).read_bytes())
    state = load_file(str(folder / ADE / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("criterion.")},
              str(lean / "model.safetensors"))  # fmt: skip
    detected = AnnotatorCache(tmp_path).run("oneformer_ade20k", picture(), 64, 0, 0)
    reference = AnnotatorCache(folder).run("oneformer_ade20k", picture(), 64, 0, 0)
    assert (detected == reference).all()  # the loss's tensors are not used to segment
