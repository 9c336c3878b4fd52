"""DWPose (`dw_openpose_full`): whole-body pose from two ONNX networks run with onnxruntime.

As sd-webui-controlnet runs it (without mmpose): `yolox_l.onnx` finds the people,
`dw-ll_ucoco_384.onnx` (RTMPose, 133 COCO-WholeBody keypoints as SimCC) finds each one's
body, face and hands; both from huggingface.co/yzd-v/DWPose, read from
`models/ControlNet/annotators` (`annotator_files.py`). The steps around the networks are
`dwpose_math.py`. The map is drawn with controlnet_aux's OpenPose drawing
(`open_pose.util`: the body's coloured limbs, the hands' lines, the face's white dots), so
it looks like `openpose_full`'s.

The image is handled as the extension's `resize_image_with_pad` does: its shorter side
scaled to the processor resolution, padded at the right and bottom (edge pixels) to a
multiple of 64, the pad cut off the map again. The pixels go to the networks in RGB order,
as the extension passes them. Both networks run on the CPU, as the extension runs them.

This module must never import a UI library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import dwpose_math as dw
from .annotators import AnnotatorError

DETECTOR, POSE = "yolox_l.onnx", "dw-ll_ucoco_384.onnx"


def _session(path: Path) -> Any:
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors are plain Exceptions
        said = " ".join(str(exc).split())[:300]
        raise AnnotatorError(f"annotator {path.name} is not a readable ONNX model: "
                             f"{said}") from None  # fmt: skip


def _input_size(session: Any, default: tuple[int, int]) -> tuple[int, int]:
    """The (w, h) of a model's NCHW input, `default` where it is not fixed."""
    shape = session.get_inputs()[0].shape
    h, w = (shape[2], shape[3]) if len(shape) == 4 else (None, None)
    return (w, h) if isinstance(w, int) and isinstance(h, int) else default


class DWPose:
    """The two sessions; `__call__(image, res)` gives the pose map."""

    def __init__(self, detector: Path, pose: Path):
        self.files = (detector.name, pose.name)
        self.detector, self.pose = _session(detector), _session(pose)
        self.side = _input_size(self.detector, (640, 640))[0]
        self.size = _input_size(self.pose, (288, 384))

    def people(self, image: np.ndarray) -> list[dw.Person]:
        """Every person's keypoints in an RGB uint8 image, in its pixels."""
        boxes = self._boxes(image)
        if boxes is None:
            return []
        if len(boxes) == 0:  # something, but no person: the extension's whole image
            boxes = np.array([[0, 0, image.shape[1], image.shape[0]]], np.float32)
        return [self._person(image, box) for box in boxes]

    def _boxes(self, image: np.ndarray) -> np.ndarray | None:
        batch, ratio = dw.letterbox(image, self.side)
        rows = self._run(self.detector, batch, DETECTOR)[0]
        try:
            return dw.decode_boxes(np.asarray(rows, np.float32)[0], self.side, ratio)
        except (ValueError, IndexError) as exc:
            raise AnnotatorError(f"annotator {self.files[0]} is not YOLOX: {exc}") from None

    def _person(self, image: np.ndarray, box: np.ndarray) -> dw.Person:
        centre, extent = dw.crop_box(box, self.size)
        outputs = self._run(self.pose, dw.crop(image, centre, extent, self.size), POSE)
        try:
            simcc_x, simcc_y = (np.asarray(out, np.float32)[0] for out in outputs[:2])
            points = dw.decode_simcc(simcc_x, simcc_y)
            return dw.person(dw.to_image(points, centre, extent, self.size))
        except (ValueError, IndexError) as exc:
            raise AnnotatorError(f"annotator {self.files[1]} is not DWPose's "
                                 f"(SimCC x and y): {exc}") from None  # fmt: skip

    @staticmethod
    def _run(session: Any, batch: np.ndarray, name: str) -> list:
        try:
            return session.run(None, {session.get_inputs()[0].name: batch})
        except Exception as exc:  # a model whose input is another size or kind
            said = " ".join(str(exc).split())[:300]
            raise AnnotatorError(f"annotator {name} cannot run: {said}") from None

    def __call__(self, image: np.ndarray, res: int) -> np.ndarray:
        """The map (RGB uint8) of an RGB uint8 image, its shorter side at `res`."""
        h, w = image.shape[:2]
        k = res / min(h, w)
        size = (max(int(round(w * k)), 1), max(int(round(h * k)), 1))
        how = cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA  # the extension's choice
        resized = cv2.resize(image, size, interpolation=how)
        padded = np.pad(resized, [[0, -size[1] % 64], [0, -size[0] % 64], [0, 0]], mode="edge")
        canvas = draw(self.people(padded), *padded.shape[:2])
        return np.ascontiguousarray(canvas[: size[1], : size[0]])


def _keypoints(points: np.ndarray, h: int, w: int, hidden: Any) -> list:
    """controlnet_aux Keypoints (x, y in 0-1) of the seen points, `hidden` for the others."""
    from controlnet_aux.open_pose.body import Keypoint

    return [Keypoint(float(x) / w, float(y) / h) if score >= dw.VISIBLE else hidden
            for x, y, score in points]  # fmt: skip


def draw(people: list[dw.Person], h: int, w: int) -> np.ndarray:
    """The OpenPose map of the people: body, both hands and face on black."""
    from controlnet_aux.open_pose import util
    from controlnet_aux.open_pose.body import Keypoint

    off = Keypoint(-1.0, -1.0)  # the hand and face drawings skip points off the canvas
    canvas = np.zeros((h, w, 3), np.uint8)
    for one in people:
        canvas = util.draw_bodypose(canvas, _keypoints(one.body, h, w, None))
        for hand in (one.left_hand, one.right_hand):
            canvas = util.draw_handpose(canvas, _keypoints(hand, h, w, off))
        if (one.face[:68, 2] >= dw.VISIBLE).any():  # the eyes alone are no face
            canvas = util.draw_facepose(canvas, _keypoints(one.face, h, w, off))
    return canvas


def build(paths: dict[str, Path]) -> DWPose:
    return DWPose(paths[DETECTOR], paths[POSE])
