"""Face restoration (GFPGAN, CodeFormer) through facexlib's helper, with real model files.

The CodeFormer file is the real architecture with random weights (`tests/tiny_faces.py`),
loaded through spandrel from a `.pth` as users have it; the detector and parser are
facexlib's, loaded from our files. A random detector finds random faces, so the test
detector is made to find none: `restore_faces` on it shows detection runs and leaves the
picture alone, and the restore-and-paste path is driven with a face whose five landmarks
are given to the helper (what detection would hand it). Not covered here: that RetinaFace
finds a real face (that needs the released weights).
"""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from webui.imaging.face_restoration import (
    FaceRestorerCache,
    FaceRestorerError,
    blend,
    load_restorer,
    paste_restored,
)
from webui.imaging.face_restorer_list import (
    CODEFORMER,
    GFPGAN,
    FaceRestorerFolders,
    MissingFaceModelError,
    UnknownFaceRestorerError,
)

SIZE, FACE = 96, (24, 72)  # image side; the face box's first and last pixel (x and y)


@pytest.fixture(scope="module")
def folders(face_models):
    return FaceRestorerFolders.under(face_models)


@pytest.fixture(scope="module")
def cache():
    return FaceRestorerCache("cpu")


def noise(seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.fixture(scope="module")
def restored(folders, cache):
    """(original, restored) with one face given by its landmarks in the FACE box."""
    ref = folders.resolve("codeformer", 0.5, field="restore_faces")
    image = noise()
    helper = cache.helper(ref)
    helper.clean_all()
    helper.read_image(np.array(image)[:, :, ::-1])
    side = FACE[1] - FACE[0]
    helper.all_landmarks_5 = [(helper.face_template * side / 512 + FACE[0]).astype(np.float32)]
    try:
        result = paste_restored(helper, cache.restore_fn(ref))
    finally:
        helper.clean_all()
    return image, result


def _changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).sum(axis=2) > 0


def test_a_face_is_restored_inside_its_box_only(restored):
    original, result = restored
    assert result.size == original.size and result.mode == "RGB"
    changed = _changed(original, result)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 0.5 * (FACE[1] - FACE[0]) ** 2  # the face was redrawn
    assert ys.min() >= FACE[0] - 1 and ys.max() <= FACE[1] + 1
    assert xs.min() >= FACE[0] - 1 and xs.max() <= FACE[1] + 1


def test_visibility_blends_inside_the_face_only(restored):
    original, result = restored
    half = blend(original, result, 0.5)
    assert np.array_equal(np.asarray(half), np.asarray(Image.blend(original, result, 0.5)))
    assert not _changed(original, half)[~_changed(original, result)].any()
    assert _changed(original, half).sum() > 0
    assert blend(original, result, 1.0) is result


def test_no_face_found_leaves_the_image(folders, cache):
    ref = folders.resolve(CODEFORMER, 0.5, field="restore_faces")
    image = noise(1)
    result, found = cache.restore(image, ref)
    assert found == 0 and np.array_equal(np.asarray(result), np.asarray(image))


def test_missing_files_are_named(tmp_path, face_models):
    folders = FaceRestorerFolders(tmp_path / "GFPGAN", tmp_path / "Codeformer")
    with pytest.raises(MissingFaceModelError) as info:
        folders.resolve(GFPGAN, field="gfpgan_visibility")
    message = str(info.value)
    assert message.startswith("gfpgan_visibility: ")
    assert "GFPGANv1.4.pth" in message and str(tmp_path / "GFPGAN") in message
    (tmp_path / "Codeformer").mkdir()
    (tmp_path / "Codeformer" / "codeformer-v0.1.0.pth").write_bytes(b"")
    with pytest.raises(MissingFaceModelError, match="detection_Resnet50_Final.pth and "
                       "parsing_parsenet.pth in .*GFPGAN"):  # fmt: skip
        folders.resolve("CodeFormer", field="restore_faces")
    with pytest.raises(UnknownFaceRestorerError, match="known: CodeFormer, GFPGAN"):
        folders.resolve("RestoreFormer", field="restore_faces")


def test_a_file_gone_after_the_request_fails_clearly(folders, tmp_path):
    ref = folders.resolve(CODEFORMER, field="restore_faces")
    gone = replace(ref, path=str(tmp_path / "codeformer-v0.1.0.pth"))
    with pytest.raises(MissingFaceModelError, match="codeformer-v0.1.0.pth not found in"):
        FaceRestorerCache("cpu").model(gone)


def test_the_wrong_model_or_a_pickle_is_refused(folders, tmp_path):
    codeformer = folders.model_file(CODEFORMER)
    with pytest.raises(FaceRestorerError, match="is a CodeFormer model, not GFPGAN"):
        load_restorer(codeformer, GFPGAN)
    evil = tmp_path / "GFPGANv1.4.pth"
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil.write_bytes(pickle.dumps({"params_ema": Evil()}))
    with pytest.raises(FaceRestorerError, match="GFPGANv1.4.pth: cannot be read"):
        load_restorer(evil, GFPGAN)
    assert not marker.exists()  # spandrel's restricted unpickler never ran it


def test_a_gfpgan_file_loads_through_spandrel(tmp_path, face_models):
    from tests.tiny_faces import write_gfpgan

    for name in ("detection_Resnet50_Final.pth", "parsing_parsenet.pth"):
        (tmp_path / "GFPGAN").mkdir(exist_ok=True)
        (tmp_path / "GFPGAN" / name).symlink_to(face_models / "GFPGAN" / name)
    write_gfpgan(tmp_path / "GFPGAN" / "GFPGANv1.4.pth")
    ref = FaceRestorerFolders.under(tmp_path).resolve("gfpgan", field="gfpgan_visibility")
    assert ref.name == GFPGAN and ref.path.endswith("GFPGANv1.4.pth")
    model = FaceRestorerCache("cpu").model(ref)
    assert type(model).__name__ == "GFPGANv1Clean"


def test_params_with_a_restorer_survive_a_restart(folders):
    from webui.core import job_codec
    from webui.core.params import Txt2ImgParams
    from webui.core.params_img2img import ExtrasParams

    ref = folders.resolve(CODEFORMER, 0.3, field="restore_faces")
    for kind, params in (
        ("txt2img", Txt2ImgParams(restore_faces=True, face_restorer=ref)),
        ("extras", ExtrasParams(codeformer_visibility=0.5, codeformer=ref)),
    ):
        assert job_codec.decode_params(kind, *job_codec.encode(params)) == params
