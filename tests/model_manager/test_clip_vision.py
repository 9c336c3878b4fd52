"""CLIP vision models from models/clip_vision: a folder and a single file give the same
embeddings (webui/model_manager/clip_vision.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.tiny_clip_vision import PATCH, PROJECTION, SIDE, WIDTH, save_tiny_clip_vision
from webui.errors import UserError
from webui.model_manager.clip_vision import ClipVisionEmbedder, config_from_file, list_models


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_vision")
    save_tiny_clip_vision(folder)
    return folder


def pictures() -> list[Image.Image]:
    return [Image.new("RGB", (64, 48), c) for c in ("red", "blue", "white")] + [
        Image.new("L", (40, 80), 128)
    ]


def test_the_config_is_read_from_the_tensor_shapes(clip_dir) -> None:
    config = config_from_file(clip_dir / "tiny_clip_vision.safetensors")
    assert (config.hidden_size, config.num_hidden_layers, config.patch_size) == (WIDTH, 2, PATCH)
    assert (config.image_size, config.projection_dim, config.intermediate_size) == (
        SIDE,
        PROJECTION,
        96,
    )
    assert [p.name for p in list_models(clip_dir)] == ["tiny-vit", "tiny_clip_vision.safetensors"]


def test_folder_and_single_file_embed_alike(clip_dir) -> None:
    folder = ClipVisionEmbedder.load(clip_dir / "tiny-vit")
    single = ClipVisionEmbedder.load(clip_dir / "tiny_clip_vision.safetensors")
    a, b = folder.embed(pictures(), batch=3), single.embed(pictures(), batch=3)
    assert a.shape == (4, PROJECTION) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(a[0], a[1])  # different pictures, different embeddings


def test_files_that_are_no_clip_vision_model_are_refused(tmp_path) -> None:
    save_file({"visual.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3, 3)},
              tmp_path / "open_clip.safetensors")  # fmt: skip
    with pytest.raises(UserError, match="OpenCLIP key layout"):
        ClipVisionEmbedder.load(tmp_path / "open_clip.safetensors")
    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="not a CLIP vision model"):
        ClipVisionEmbedder.load(tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="not found"):
        ClipVisionEmbedder.load(tmp_path / "missing.safetensors")


def test_the_extensions_pth_file_gives_the_same_embeddings(clip_dir, tmp_path) -> None:
    """sd-webui-controlnet's `clip_h.pth` (a pickled transformers state dict) loads through
    the restricted unpickler, as the IP-Adapter preprocessors need it."""
    from safetensors.torch import load_file

    pth = tmp_path / "clip_h.pth"
    torch.save(load_file(str(clip_dir / "tiny_clip_vision.safetensors")), pth)
    assert config_from_file(pth).hidden_size == WIDTH
    single = ClipVisionEmbedder.load(clip_dir / "tiny_clip_vision.safetensors")
    pickled = ClipVisionEmbedder.load(pth)
    assert np.array_equal(single.embed(pictures()), pickled.embed(pictures()))
