"""DWPose's pre- and post-processing around its two ONNX networks (numpy and OpenCV only).

The steps are those of sd-webui-controlnet's DWPose (`annotator/openpose/cv_ox_det.py`,
`cv_ox_pose.py`, `wholebody.py`), written here from their description:

- the person detector (YOLOX, `yolox_l.onnx`): the image letterboxed into its square
  input (top-left, padding value 114, float 0-255, channels first); its rows (one per
  anchor of the stride 8, 16, 32 grids: x, y, log w, log h, objectness, 80 class scores)
  decoded into boxes; boxes of class 0 (person) above 0.1 kept by NMS (IoU 0.45), then
  those above 0.3;
- the pose model (RTMPose, `dw-ll_ucoco_384.onnx`): each person box grown by 1.25, made
  the model's aspect (288x384) and cut out with an affine warp, normalised with ImageNet's
  mean and deviation; its SimCC outputs (per keypoint, one row of bins along x, one along
  y, 2 bins per pixel) decoded by argmax, the score being the smaller of the two maxima;
  the points mapped back into the image;
- the 133 COCO-WholeBody keypoints (17 body, 6 feet, 68 face, 21 + 21 hands) made
  OpenPose's 18-point body (the neck is the mean of the shoulders, seen when both are)
  in OpenPose's order, the face's 68 points plus the two eyes, and the two hands.

This module must never import torch, onnxruntime or a UI library.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114
STRIDES = (8, 16, 32)
NMS_SCORE, NMS_IOU, PERSON_SCORE = 0.1, 0.45, 0.3
BOX_PADDING = 1.25
SIMCC_SPLIT = 2.0
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
VISIBLE = 0.3  # a keypoint is drawn when its score is at least this
# OpenPose's 18 body points from COCO-WholeBody's (17: the neck made from the shoulders)
OPENPOSE_BODY = (0, 17, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
FACE = slice(23, 91)  # COCO-WholeBody's 68 face points
LEFT_HAND, RIGHT_HAND = slice(91, 112), slice(112, 133)
EYES = (14, 15)  # OpenPose's right and left eye, appended to the face as OpenPose has 70


@dataclass
class Person:
    """One person's keypoints in image pixels: (n, 3) arrays of x, y, score."""

    body: np.ndarray  # 18, OpenPose's order
    face: np.ndarray  # 70: 68 points and the two eyes
    left_hand: np.ndarray  # 21
    right_hand: np.ndarray  # 21


def letterbox(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """The detector's input (1, 3, side, side) float32 and the image's scale in it."""
    h, w = image.shape[:2]
    ratio = min(side / h, side / w)
    size = (int(w * ratio), int(h * ratio))
    padded = np.full((side, side, 3), PAD_VALUE, np.uint8)
    padded[: size[1], : size[0]] = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], np.float32), ratio


def _grids(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Each anchor's grid cell (x, y) and stride, in the detector's row order."""
    cells, strides = [], []
    for stride in STRIDES:
        n = side // stride
        xs, ys = np.meshgrid(np.arange(n), np.arange(n))
        cells.append(np.stack((xs, ys), 2).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)


def decode_boxes(rows: np.ndarray, side: int, ratio: float) -> np.ndarray | None:
    """Person boxes (n, 4: x0, y0, x1, y1 in image pixels) from the detector's rows
    (anchors, 5 + classes); None when nothing at all was detected (no pose then), an
    empty array when something but no person was (the pose model sees the whole image)."""
    cells, strides = _grids(side)
    if rows.shape[0] != len(cells) or rows.shape[1] < 6:
        raise ValueError(f"detector output {rows.shape}: expected ({len(cells)}, 5 + classes)")
    centre = (rows[:, :2] + cells) * strides
    size = np.exp(rows[:, 2:4]) * strides
    scores = rows[:, 4:5] * rows[:, 5:]
    if not (scores > NMS_SCORE).any():
        return None
    boxes = np.concatenate((centre - size / 2, centre + size / 2), 1) / ratio
    person = scores[:, 0]
    candidates = np.flatnonzero(person > NMS_SCORE)
    xywh = [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
            for x0, y0, x1, y1 in boxes[candidates]]  # fmt: skip
    kept = cv2.dnn.NMSBoxes(xywh, person[candidates].tolist(), NMS_SCORE, NMS_IOU)
    kept = candidates[np.asarray(kept, int).reshape(-1)]
    return boxes[kept[person[kept] > PERSON_SCORE]].reshape(-1, 4)


def crop_box(box: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The centre and the (w, h) extent of a person box grown by 1.25 and widened or
    heightened to the pose model's aspect; `size` is its input (w, h)."""
    centre = (box[:2] + box[2:]) / 2
    w, h = (box[2:] - box[:2]) * BOX_PADDING
    aspect = size[0] / size[1]
    extent = np.array((w, w / aspect) if w > h * aspect else (h * aspect, h), np.float32)
    return centre.astype(np.float32), extent


def crop(image: np.ndarray, centre: np.ndarray, extent: np.ndarray,
         size: tuple[int, int]) -> np.ndarray:  # fmt: skip
    """The pose model's input (1, 3, h, w) float32: the box cut out and normalised."""
    scale = size[0] / extent[0]  # the same along y: the extent has the input's aspect
    matrix = np.array([[scale, 0, size[0] / 2 - scale * centre[0]],
                       [0, scale, size[1] / 2 - scale * centre[1]]], np.float32)  # fmt: skip
    warped = cv2.warpAffine(image, matrix, size, flags=cv2.INTER_LINEAR)
    normalised = (warped.astype(np.float32) - MEAN) / STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None], np.float32)


def decode_simcc(simcc_x: np.ndarray, simcc_y: np.ndarray) -> np.ndarray:
    """(K, 3) keypoints in the model's input pixels (x, y, score) from one person's SimCC
    rows (K, bins); a keypoint whose best bin is not above 0 is at (-1, -1)."""
    xs, ys = simcc_x.argmax(1), simcc_y.argmax(1)
    scores = np.minimum(simcc_x.max(1), simcc_y.max(1))
    points = np.stack((xs, ys), 1).astype(np.float32) / SIMCC_SPLIT
    points[scores <= 0] = -1
    return np.concatenate((points, scores[:, None].astype(np.float32)), 1)


def to_image(points: np.ndarray, centre: np.ndarray, extent: np.ndarray,
             size: tuple[int, int]) -> np.ndarray:  # fmt: skip
    """Keypoints from the model's input pixels back into the image's."""
    out = points.copy()
    out[:, :2] = points[:, :2] / np.array(size, np.float32) * extent + centre - extent / 2
    return out


def person(points: np.ndarray) -> Person:
    """OpenPose's parts from one person's 133 COCO-WholeBody keypoints (x, y, score)."""
    if points.shape != (133, 3):
        raise ValueError(f"pose output has {points.shape[0]} keypoints: expected 133")
    shoulders = points[[5, 6]]
    neck = np.append(shoulders[:, :2].mean(0), float((shoulders[:, 2] > VISIBLE).all()))
    body = np.concatenate((points[:17], neck[None]))[list(OPENPOSE_BODY)]
    face = np.concatenate((points[FACE], body[list(EYES)]))
    return Person(body, face, points[LEFT_HAND].copy(), points[RIGHT_HAND].copy())
