"""Depth Anything v1 and v2 (ControlNet's depth_anything, depth_anything_v2) from tiny
random-weight files in the original repositories' layout (`pretrained.*` with fused qkv,
`depth_head.*`), saved as users have them (.pth by torch.save, or the .safetensors twin),
read through our converter into transformers' DepthAnythingForDepthEstimation. Nothing
goes to the network: the downloader is replaced by one that records or fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from webui.imaging.control_preprocessors import (
    modules_of_type,
    preprocessor_named,
    refused_reason,
)
from webui.model_manager.annotator_depth_anything import (
    DepthAnythingDetector,
    DepthAnythingError,
    build_model,
)
from webui.model_manager.annotator_files import AnnotatorMissingError, ensure_files, hub_download
from webui.model_manager.annotators import AnnotatorCache, read_state
from webui.model_manager.tiny_depth_anything import save_tiny_depth_anything

MODULES = ("depth_anything", "depth_anything_v2")


def version(module: str) -> int:
    return 2 if module == "depth_anything_v2" else 1


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """module -> (folder, the transformers model its file was written from)."""
    folder = tmp_path_factory.mktemp("ControlNet") / "annotators"
    return {m: (folder, save_tiny_depth_anything(folder, m, seed=5)[1]) for m in MODULES}


def no_download(calls: list):
    def download(name, folder, report):
        calls.append(name)
        raise OSError("no network in tests")

    return download


def picture(height: int = 64, width: int = 96) -> np.ndarray:
    image = np.full((height, width, 3), 255, np.uint8)
    image[10:50, 20:60] = (20, 20, 20)
    image[30:60, 50:90] = (200, 40, 40)
    return image


@pytest.mark.parametrize(
    ("module", "suffix"), [("depth_anything", ".pth"), ("depth_anything_v2", ".safetensors")]
)
def test_the_original_file_gives_the_transformers_model(tmp_path, module, suffix):
    path, written_from = save_tiny_depth_anything(tmp_path, module, seed=1,
                                                  safetensors=suffix == ".safetensors")  # fmt: skip
    assert path.suffix == suffix and "pretrained.blocks.0.attn.qkv.weight" in read_state(path)
    model = build_model(read_state(path), version(module), path.name)
    layers = [9, 10, 11, 12] if module == "depth_anything" else [3, 6, 9, 12]
    assert model.config.backbone_config.out_indices == layers  # v1: the last 4; v2: ViT-S/B's
    x = torch.randn(1, 3, 518, 518)  # the position grid's own size: no resize of it
    with torch.no_grad():
        ours, theirs = model(x).predicted_depth, written_from(x).predicted_depth
    assert ours.shape == (1, 518, 518) and ours.std() > 0.01
    torch.testing.assert_close(ours, theirs)


def test_other_sizes_resize_the_positions_as_dinov2_does(files):
    folder, written_from = files["depth_anything_v2"]
    model = build_model(read_state(folder / "depth_anything_v2_vitl.pth"), 2, "v2")
    x = torch.randn(1, 3, 518, 546)  # 37 x 39 patches
    with torch.no_grad():
        ours, plain = model(x).predicted_depth, written_from(x).predicted_depth
        # DINOv2 resizes by a scale factor with a 0.1 offset; transformers by target size
        assert (ours - plain).abs().max() > 1e-3
        written_from.backbone.embeddings.interpolate_pos_encoding = (
            model.backbone.embeddings.interpolate_pos_encoding.__func__.__get__(
                written_from.backbone.embeddings))  # fmt: skip
        torch.testing.assert_close(ours, written_from(x).predicted_depth)


@pytest.fixture(scope="module")
def maps(files) -> dict:
    """module -> (map at the hidden resolution, map at 64), and the downloads asked for."""
    calls: list = []
    cache = AnnotatorCache(files["depth_anything"][0], size=4, download=no_download(calls))
    found = {m: (cache.run(m, picture(), -1, 0, 0), cache.run(m, picture(), 64, 0, 0))
             for m in MODULES}  # fmt: skip
    return {"maps": found, "downloads": calls, "loaded": cache.loaded()}


@pytest.mark.parametrize("module", MODULES)
def test_maps_from_the_folder_as_the_extension_makes_them(maps, module):
    detected, small = maps["maps"][module]
    assert detected.dtype == np.uint8 and detected.shape == (512, 768, 3)  # hidden: 512
    assert (detected[:, :, 0] == detected[:, :, 2]).all()  # grey, three channels
    assert detected.min() == 0 and detected.max() == 255  # min-max normalised
    assert small.shape == (64, 96, 3) and small.std() > 0
    assert maps["downloads"] == [] and maps["loaded"] == list(MODULES)


def test_v1_and_v2_feed_different_layers(maps):
    v1, v2 = (maps["maps"][m][1] for m in MODULES)
    assert np.abs(v1.astype(int) - v2).mean() > 1


def test_the_network_input_is_518_multiple_of_14_imagenet_normalised():
    detector = DepthAnythingDetector(torch.nn.Linear(1, 1))
    grey = np.full((512, 768, 3), 128, np.uint8)
    x = detector.net_input(grey)
    assert x.shape == (1, 3, 518, 784) and x.dtype == torch.float32  # 518 * 1.5 = 777 -> 784
    expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[0, :, 100, 100].numpy(), expected, rtol=1e-5)
    tall = detector.net_input(np.zeros((600, 400, 3), np.uint8))
    assert tall.shape[2:] == (784, 518)  # 777: 55.5 patches, rounded


def test_the_safetensors_twin_is_taken_first(tmp_path, maps):
    save_tiny_depth_anything(tmp_path, "depth_anything_v2", seed=5, safetensors=True)
    (tmp_path / "depth_anything_v2_vitl.pth").write_bytes(b"not a pickle")
    twin = AnnotatorCache(tmp_path).run("depth_anything_v2", picture(), 64, 0, 0)
    np.testing.assert_array_equal(twin, maps["maps"]["depth_anything_v2"][1])  # same weights


def test_files_that_are_not_depth_anything_are_named(tmp_path, files):
    state = read_state(files["depth_anything"][0] / "depth_anything_vitl14.pth")
    head_only = {k: v for k, v in state.items() if not k.startswith("depth_head.projects.")}
    with pytest.raises(DepthAnythingError, match=r"x\.pth is not a Depth Anything .*projects"):
        build_model(head_only, 1, "x.pth")
    extra = {**state, "pretrained.blocks.0.attn.rope": torch.zeros(1)}
    with pytest.raises(DepthAnythingError, match="unknown keys pretrained.blocks.0.attn.rope"):
        build_model(extra, 1, "x.pth")
    eight = {k: v for k, v in state.items()
             if not any(k.startswith(f"pretrained.blocks.{i}.") for i in range(8, 12))}  # fmt: skip
    with pytest.raises(DepthAnythingError, match="12 .* or 24 .* blocks, this one 8"):
        build_model(eight, 2, "v2.pth")
    assert build_model(eight, 1, "v1.pth").config.backbone_config.out_indices == [5, 6, 7, 8]


def test_missing_weights_name_the_file_folder_and_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls: list = []
    cache = AnnotatorCache(tmp_path / "annotators", download=no_download(calls))
    with pytest.raises(AnnotatorMissingError) as caught:
        cache.run("depth_anything", picture(), 64, 0, 0)
    assert calls == ["depth_anything_vitl14.pth"]
    message = str(caught.value)
    assert str(tmp_path / "annotators") in message
    assert "vitl14.pth from huggingface.co/spaces/LiheYoung/Depth-Anything into" in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AnnotatorMissingError, match="Depth-Anything-V2-Large into"):
        ensure_files(tmp_path, "depth_anything_v2", download=no_download(calls))
    assert len(calls) == 1  # offline: not tried


@pytest.mark.parametrize(("module", "repo", "path", "kind"), [
    ("depth_anything", "LiheYoung/Depth-Anything", "checkpoints/depth_anything_vitl14.pth",
     "space"),
    ("depth_anything_v2", "depth-anything/Depth-Anything-V2-Large", "depth_anything_v2_vitl.pth",
     "model"),
])  # fmt: skip
def test_the_download_asks_the_right_repository(tmp_path, monkeypatch, module, repo, path, kind):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []

    def fake_hub(repo_id, filename, local_dir, tqdm_class, repo_type="model"):
        asked.append((repo_id, filename, repo_type))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"weights")
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub)
    said: list[str] = []
    found = ensure_files(tmp_path, module, download=hub_download, report=said.append)
    assert asked == [(repo, path, kind)]
    name = Path(path).name
    assert found[name] == tmp_path / name and found[name].read_bytes() == b"weights"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no leftovers
    assert said == [f"Downloading {name} from {repo}"]


def test_listed_under_depth_and_no_longer_refused():
    for module in MODULES:
        assert refused_reason(module) is None
        preprocessor = preprocessor_named(module)
        assert preprocessor.annotator and preprocessor.title == module
        assert preprocessor.resolution is None  # hidden, as the extension's
        assert module in modules_of_type("Depth")
