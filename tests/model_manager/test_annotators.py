"""ControlNet's annotators with weights, run from random-weight files in the real layouts.

Tested at full architecture (controlnet_aux's nets take no size settings): HED, PiDiNet,
MLSD and the realistic lineart net (3-56 MB each); openpose, normal_bae, lineart_anime and
MiDaS are 200-500 MB and are left to a manual check. No test touches the network: the
downloader is replaced by one that records or fails.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from webui.model_manager.annotator_files import (
    FILES,
    AnnotatorMissingError,
    ensure_files,
    hub_download,
)
from webui.model_manager.annotators import (
    ANNOTATORS,
    Annotator,
    AnnotatorCache,
    AnnotatorError,
)
from webui.model_manager.loader import UnsafePickleError
from webui.model_manager.tiny_annotators import save_random_annotator

pytest.importorskip("controlnet_aux")
TESTED = ("hed", "pidinet", "mlsd", "lineart")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ControlNet") / "annotators"
    for module in TESTED:
        save_random_annotator(folder, module, seed=3)
    return folder


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


def test_every_module_names_its_files_and_its_network():
    assert set(ANNOTATORS) == set(FILES)


@pytest.fixture(scope="module")
def cache(folder) -> AnnotatorCache:
    return AnnotatorCache(folder, size=8)  # each network built once for the module


@pytest.mark.parametrize("module", ["hed", "scribble_hed", "pidinet", "mlsd", "lineart"])
def test_maps_from_the_folder_at_the_processor_resolution(cache, module, monkeypatch):
    calls: list = []
    monkeypatch.setattr(cache, "download", no_download(calls))
    detected = cache.run(module, picture(), 64, 0.1, 0.1)
    assert detected.dtype == np.uint8 and detected.shape == (64, 96, 3)  # shorter side: res
    assert calls == []  # read from the folder, nothing downloaded
    if module in ("hed", "pidinet", "lineart"):  # random weights still give a picture
        assert detected.std() > 0
    if module == "scribble_hed":  # the extension's scribble: binary lines
        assert set(np.unique(detected)) <= {0, 255}


def fake(name: str, seen: list) -> Annotator:
    """An annotator whose network is a stand-in (the cache's rules without the nets)."""

    def call(detector, image, res, a, b):
        seen.append((name, res))
        return np.zeros((res, res), np.uint8)

    return Annotator(name, lambda paths: SimpleNamespace(net=torch.nn.Linear(1, 1)), call)


def test_hidden_resolution_means_512_and_the_cache_keeps_two(folder, monkeypatch):
    seen: list = []
    for module in ("pidinet", "pidinet_safe", "mlsd", "hed"):
        model = "pidinet" if module.startswith("pidinet") else module
        monkeypatch.setitem(ANNOTATORS, module, fake(model, seen))
    cache = AnnotatorCache(folder, size=2)
    assert cache.run("pidinet", picture(32, 48), -1, 0, 0).shape == (512, 768, 3)
    assert seen == [("pidinet", 512)]  # its resolution slider is hidden: 512, as the extension
    cache.run("mlsd", picture(), 64, 0.1, 0.1)
    cache.run("pidinet_safe", picture(), 64, 0, 0)  # the same network as pidinet
    assert cache.loaded() == ["mlsd", "pidinet"]
    cache.run("hed", picture(), 64, 0, 0)
    assert cache.loaded() == ["pidinet", "hed"]  # the least recently used went
    cache.clear()
    assert cache.loaded() == []


def test_missing_weights_name_the_file_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # tests/conftest.py sets it
    calls: list = []
    cache = AnnotatorCache(tmp_path / "annotators", download=no_download(calls))
    with pytest.raises(AnnotatorMissingError) as caught:
        cache.run("openpose_full", picture(), 64, 0, 0)
    assert calls == ["body_pose_model.pth"]
    message = str(caught.value)
    assert "body_pose_model.pth" in message and str(tmp_path / "annotators") in message


def test_offline_no_download_is_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls: list = []
    with pytest.raises(AnnotatorMissingError, match="ControlNetHED.pth"):
        ensure_files(tmp_path, "hed", download=no_download(calls))
    assert calls == []


def test_the_download_lands_atomically_under_the_real_name(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []

    def fake_hub(repo, name, local_dir, tqdm_class):
        asked.append((repo, name))
        with tqdm_class(total=4 << 20, disable=True) as bar:  # the download's progress
            bar.update(1 << 20)
            bar.update(3 << 20)
        path = Path(local_dir) / name
        path.write_bytes(b"weights")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub)
    said: list[str] = []
    found = ensure_files(tmp_path, "mlsd", download=hub_download, report=said.append)
    assert asked == [("lllyasviel/Annotators", "mlsd_large_512_fp32.pth")]
    assert found["mlsd_large_512_fp32.pth"].read_bytes() == b"weights"
    assert [p.name for p in tmp_path.iterdir()] == ["mlsd_large_512_fp32.pth"]  # no leftovers
    assert said == [
        f"Downloading mlsd_large_512_fp32.pth from lllyasviel/Annotators{tail}"
        for tail in ("", ": 25% of 4 MB", ": 100% of 4 MB")
    ]


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    folder = tmp_path / "annotators"
    folder.mkdir()
    torch.save({"w": Payload()}, folder / "ControlNetHED.pth")
    with pytest.raises(UnsafePickleError):
        AnnotatorCache(folder).run("hed", picture(), 64, 0, 0)


def test_weights_of_another_network_are_named(tmp_path, folder):
    other = tmp_path / "annotators"
    other.mkdir()
    (other / "ControlNetHED.pth").write_bytes((folder / "table5_pidinet.pth").read_bytes())
    with pytest.raises(AnnotatorError, match="ControlNetHED.pth do not fit"):
        AnnotatorCache(other).run("hed", picture(), 64, 0, 0)
