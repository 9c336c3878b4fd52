"""DWPose (`dw_openpose_full`) from tiny ONNX files with the real inputs and outputs.

The tiny detector finds one person box, the tiny pose model puts chosen keypoints at
chosen SimCC bins (`tests/tiny_dwpose.py`): the test knows where every point must land in
the image, and where the OpenPose drawing must then have its colours. No test touches the
network: the downloader is replaced by one that records or fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.tiny_dwpose import (
    BINS,
    STEP,
    WANTED,
    H,
    W,
    at,
    save_tiny_detector,
    save_tiny_person,
    save_tiny_pose,
)
from webui.model_manager import dwpose_math as dw
from webui.model_manager.annotator_dwpose import DWPose
from webui.model_manager.annotator_files import AnnotatorMissingError, ensure_files, hub_download
from webui.model_manager.annotators import AnnotatorCache, AnnotatorError

pytest.importorskip("controlnet_aux")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_person(tmp_path_factory.mktemp("ControlNet") / "annotators")


def test_simcc_decode_takes_the_best_bins_and_the_smaller_peak():
    simcc_x, simcc_y = np.zeros((3, 20), np.float32), np.zeros((3, 30), np.float32)
    simcc_x[0, 7], simcc_y[0, 11] = 0.8, 0.6
    simcc_x[1, 19], simcc_y[1, 0] = 0.5, 0.9
    decoded = dw.decode_simcc(simcc_x, simcc_y)  # keypoint 2: no peak at all
    np.testing.assert_allclose(decoded, [[3.5, 5.5, 0.6], [9.5, 0, 0.5], [-1, -1, 0]])


def test_the_detector_input_is_the_image_at_the_top_left_padded_with_114():
    image = np.full((100, 200, 3), 7, np.uint8)  # wide: fills the width, half the height
    batch, ratio = dw.letterbox(image, 64)
    assert batch.shape == (1, 3, 64, 64) and batch.dtype == np.float32 and ratio == 64 / 200
    assert (batch[0, :, :32] == 7).all() and (batch[0, :, 32:] == 114).all()


def test_detector_rows_become_person_boxes_after_nms():
    rows = np.zeros((8400, 85), np.float32)
    best, other, cat = 6400 + 1600 + 5 * 20 + 4, 6400 + 1600 + 5 * 20 + 5, 100
    rows[[best, other], :4] = [[0.5, 0.5, np.log(2), np.log(3)], [0.2, 0.5, np.log(2), np.log(3)]]
    rows[best, 4:6], rows[other, 4:6] = (1.0, 0.9), (1.0, 0.8)  # overlapping: one kept
    rows[cat, 4], rows[cat, 5 + 15] = 1.0, 0.9  # a cat (class 15): not a person
    boxes = dw.decode_boxes(rows, 640, 2.0)
    np.testing.assert_allclose(boxes, [[(4.5 * 32 - 32) / 2, (5.5 * 32 - 48) / 2,
                                        (4.5 * 32 + 32) / 2, (5.5 * 32 + 48) / 2]])  # fmt: skip
    rows[[best, other], 5] = 0.2  # people below 0.3: none, the cat was seen
    assert dw.decode_boxes(rows, 640, 2.0).shape == (0, 4)
    assert dw.decode_boxes(np.zeros((8400, 85), np.float32), 640, 2.0) is None  # nothing
    with pytest.raises(ValueError, match="expected"):
        dw.decode_boxes(np.zeros((100, 85), np.float32), 640, 2.0)


def test_the_keypoints_land_where_the_networks_put_them(folder):
    people = DWPose(folder / "yolox_l.onnx", folder / "dw-ll_ucoco_384.onnx").people(
        np.zeros((H, W, 3), np.uint8)
    )
    assert len(people) == 1
    one = people[0]
    coco = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)  # OpenPose order
    for point, k in zip(one.body, coco, strict=True):
        if k is None:  # the neck: the mean of the shoulders
            expected = np.mean([at(5), at(6)], axis=0)
        else:
            expected = at(k)
            assert np.hypot(*(np.array(WANTED[k]) - expected)) < STEP  # the bins were right
        np.testing.assert_allclose(point, [*expected, 0.9 if k is not None else 1.0], atol=1e-3)
    np.testing.assert_allclose(one.face[:3, :2], [at(23), at(24), at(25)], atol=1e-3)
    assert (one.face[3:68, 2] == 0).all()  # not placed: not seen
    np.testing.assert_allclose(one.face[68:], one.body[[14, 15]])  # the eyes, as OpenPose's
    np.testing.assert_allclose(one.left_hand[:2, :2], [at(91), at(92)], atol=1e-3)
    np.testing.assert_allclose(one.right_hand[:2, :2], [at(112), at(113)], atol=1e-3)


def pixel(image: np.ndarray, x: float, y: float) -> tuple[int, ...]:
    return tuple(int(v) for v in image[int(y), int(x)])


def test_the_map_has_the_openpose_skeleton_where_the_person_is(folder):
    cache = AnnotatorCache(folder, download=lambda *a: pytest.fail("no download"))
    image = np.full((H // 2, W // 2, 3), 90, np.uint8)  # resized to the resolution's size
    drawn = cache.run("dw_openpose_full", image, 256, 0, 0)
    assert drawn.shape == (H, W, 3) and drawn.dtype == np.uint8
    assert pixel(drawn, *at(0)) == (255, 0, 0)  # the nose: OpenPose's first colour
    neck = np.mean([at(5), at(6)], axis=0)
    assert pixel(drawn, *neck) == (255, 85, 0)
    assert pixel(drawn, *at(6)) == (255, 170, 0)  # the right shoulder
    assert pixel(drawn, *(neck + at(6)) / 2) == (153, 0, 0)  # the neck-shoulder limb, at 0.6
    assert pixel(drawn, *at(16)) == (0, 170, 255)  # the right ankle (COCO 16, OpenPose 10)
    for k in (91, 92, 112, 113):  # the hands' points: blue dots
        assert pixel(drawn, *at(k)) == (0, 0, 255)
    for k in (23, 24, 25):  # the face's: white dots
        assert pixel(drawn, *at(k)) == (255, 255, 255)
    assert pixel(drawn, 5, 5) == (0, 0, 0) and pixel(drawn, W - 5, H - 5) == (0, 0, 0)
    assert drawn[:, :40].max() == 0  # the right hand is the leftmost thing drawn (x >= 48)
    padded = cache.run("dw_openpose_full", image, 200, 0, 0)  # 200 x 300, padded to 256 x 320
    assert padded.shape == (300, 200, 3) and padded.max() == 255


def test_no_person_found_is_an_empty_map(tmp_path):
    save_tiny_detector(tmp_path, None)
    save_tiny_pose(tmp_path, BINS)
    drawn = AnnotatorCache(tmp_path).run("dw_openpose_full", np.zeros((H, W, 3), np.uint8),
                                         256, 0, 0)  # fmt: skip
    assert drawn.shape == (H, W, 3) and drawn.max() == 0


def test_missing_files_name_the_file_the_folder_and_the_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AnnotatorMissingError) as caught:
        ensure_files(tmp_path, "dw_openpose_full", download=lambda *a: pytest.fail("online"))
    message = str(caught.value)
    assert "yolox_l.onnx" in message and str(tmp_path) in message and "yzd-v/DWPose" in message
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls: list = []

    def fails(name, folder, report):
        calls.append(name)
        raise OSError("no network in tests")

    with pytest.raises(AnnotatorMissingError, match="yolox_l.onnx"):
        AnnotatorCache(tmp_path, download=fails).run("dw_openpose_full", np.zeros((64, 64, 3),
                                                     np.uint8), 64, 0, 0)  # fmt: skip
    assert calls == ["yolox_l.onnx"]


def test_the_files_download_from_yzd_v_dwpose(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []

    def fake_hub(repo, name, local_dir, tqdm_class):
        asked.append((repo, name))
        path = Path(local_dir) / name
        path.write_bytes(b"onnx")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub)
    found = ensure_files(tmp_path, "dw_openpose_full", download=hub_download)
    assert asked == [("yzd-v/DWPose", "yolox_l.onnx"), ("yzd-v/DWPose", "dw-ll_ucoco_384.onnx")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(found)


def test_a_file_that_is_not_onnx_is_named(tmp_path, folder):
    (tmp_path / "yolox_l.onnx").write_bytes(b"not a model")
    (tmp_path / "dw-ll_ucoco_384.onnx").write_bytes((folder / "dw-ll_ucoco_384.onnx").read_bytes())
    with pytest.raises(AnnotatorError, match="yolox_l.onnx is not a readable ONNX model"):
        AnnotatorCache(tmp_path).run("dw_openpose_full", np.zeros((64, 64, 3), np.uint8), 64, 0, 0)


def test_the_two_files_swapped_are_named(tmp_path, folder):
    for name, other in (("yolox_l.onnx", "dw-ll_ucoco_384.onnx"),
                        ("dw-ll_ucoco_384.onnx", "yolox_l.onnx")):  # fmt: skip
        (tmp_path / name).write_bytes((folder / other).read_bytes())
    with pytest.raises(AnnotatorError, match="cannot run|is not YOLOX"):
        AnnotatorCache(tmp_path).run("dw_openpose_full", np.zeros((64, 64, 3), np.uint8), 64, 0, 0)
