"""Object detection for the detailer (ADetailer): detector files, boxes, region masks.

Detectors are ONNX files in `models/adetailer` (`list_detectors`), run by OpenCV's DNN
module (Apache-2.0; no ultralytics, which is AGPL). The output layout read is the one
YOLOv8/YOLO11 exports write (`yolo export format=onnx`): one tensor (1, 4 + classes, N) of
box centre, size and per-class scores in the letterboxed input's pixels; boxes over the
confidence are kept after non-maximum suppression. Each box becomes a white rectangle on a
black mask of the image's size, as ADetailer makes them from boxes, and the masks are
filtered and shaped as ADetailer does (`MaskSettings`: area ratio, k largest, offset,
dilate/erode, merge / merge and invert).

This module must never import torch or a UI library; it reads files, nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw

log = logging.getLogger(__name__)

DETECTOR_SUFFIXES = (".onnx",)
INPUT_SIZE = 640  # what YOLO exports are made for (ultralytics' default imgsz)
LETTERBOX_FILL = 114  # ultralytics' padding grey
NMS_IOU = 0.7  # ultralytics' default IoU threshold
MERGE_INVERT = ("None", "Merge", "Merge and Invert")


class DetectorError(ValueError):
    """A detector file that cannot be read or gives an output of an unknown layout."""


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    confidence: float

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


@dataclass(frozen=True)
class MaskSettings:
    """ADetailer's mask options (ad_mask_k_largest, ad_mask_min/max_ratio, ad_x/y_offset,
    ad_dilate_erode, ad_mask_merge_invert)."""

    k_largest: int = 0
    min_ratio: float = 0.0
    max_ratio: float = 1.0
    x_offset: int = 0
    y_offset: int = 0
    dilate_erode: int = 4
    merge_invert: str = "None"


def list_detectors(folder: Path) -> dict[str, Path]:
    """Detector files by name (the file name, as ADetailer lists its models), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in DETECTOR_SUFFIXES]
    return {p.name: p for p in sorted(files, key=lambda p: p.name.lower())}


def detect(path: Path, image: Image.Image, confidence: float) -> list[Detection]:
    """The boxes a YOLO ONNX detector finds in `image` with at least `confidence`."""
    import cv2

    try:
        net = cv2.dnn.readNetFromONNX(str(path))
    except cv2.error as exc:
        raise DetectorError(f"cannot read detector {Path(path).name}: {exc}") from None
    rgb = np.asarray(image.convert("RGB"))
    canvas, scale, pad_x, pad_y = _letterbox(rgb)
    blob = cv2.dnn.blobFromImage(canvas, 1 / 255.0, (INPUT_SIZE, INPUT_SIZE), swapRB=False)
    net.setInput(blob)
    try:
        outputs = [np.asarray(o, dtype=np.float32)
                   for o in net.forward(net.getUnconnectedOutLayersNames())]  # fmt: skip
    except cv2.error as exc:
        raise DetectorError(f"detector {Path(path).name} failed: {exc}") from None
    out = next((o for o in outputs if o.ndim == 3), outputs[0])
    # a segmentation export adds mask coefficients after the class scores, and their
    # prototypes as a second output (1, coefficients, h, w): only the boxes are read
    protos = next((o for o in outputs if o.ndim == 4), None)
    coefficients = protos.shape[1] if protos is not None else 0
    if out.ndim != 3 or out.shape[0] != 1 or out.shape[1] < 5 + coefficients:
        raise DetectorError(
            f"detector {Path(path).name}: expected a YOLOv8 output (1, 4 + classes, N), "
            f"got {tuple(out.shape)}"
        )
    rows = out[0].T  # N x (4 + classes [+ mask coefficients])
    scores = rows[:, 4 : rows.shape[1] - coefficients].max(axis=1)
    keep = scores >= confidence
    rows, scores = rows[keep], scores[keep]
    boxes = []
    for cx, cy, w, h in rows[:, :4]:
        x1, y1 = (cx - w / 2 - pad_x) / scale, (cy - h / 2 - pad_y) / scale
        x2, y2 = (cx + w / 2 - pad_x) / scale, (cy + h / 2 - pad_y) / scale
        boxes.append(_clip((x1, y1, x2, y2), image.width, image.height))
    if not boxes:
        return []
    xywh = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes]
    chosen = cv2.dnn.NMSBoxes(xywh, scores.tolist(), float(confidence), NMS_IOU)
    found = [Detection(boxes[i], float(scores[i])) for i in np.asarray(chosen).reshape(-1)]
    return [d for d in found if d.area > 0]


def _letterbox(rgb: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """The image scaled to fit INPUT_SIZE, centred on grey (ultralytics' LetterBox)."""
    import cv2

    height, width = rgb.shape[:2]
    scale = min(INPUT_SIZE / width, INPUT_SIZE / height)
    new_w, new_h = round(width * scale), round(height * scale)
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_x, pad_y = (INPUT_SIZE - new_w) / 2, (INPUT_SIZE - new_h) / 2
    canvas = np.full((INPUT_SIZE, INPUT_SIZE, 3), LETTERBOX_FILL, dtype=np.uint8)
    top, left = round(pad_y - 0.1), round(pad_x - 0.1)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, scale, left, top


def _clip(box: tuple[float, ...], width: int, height: int) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
            min(max(x2, 0.0), width), min(max(y2, 0.0), height))  # fmt: skip


def region_masks(
    detections: list[Detection], size: tuple[int, int], settings: MaskSettings
) -> list[Image.Image]:
    """ADetailer's masks, in its order: area-ratio filter, k largest (largest first),
    one rectangle per box, offset, dilate (>0) or erode (<0), empty ones dropped, then
    merge or merge-and-invert."""
    image_area = size[0] * size[1]
    kept = [d for d in detections
            if settings.min_ratio <= d.area / image_area <= settings.max_ratio]  # fmt: skip
    if settings.k_largest > 0:
        kept = sorted(kept, key=lambda d: d.area, reverse=True)[: settings.k_largest]
    masks = [_box_mask(d.box, size) for d in kept]
    if settings.x_offset or settings.y_offset:
        masks = [ImageChops.offset(m, settings.x_offset, -settings.y_offset) for m in masks]
    if settings.dilate_erode:
        masks = [_dilate_erode(m, settings.dilate_erode) for m in masks]
        masks = [m for m in masks if m.getbbox() is not None]
    if not masks or settings.merge_invert == "None":
        return masks
    merged = masks[0]
    for mask in masks[1:]:
        merged = ImageChops.lighter(merged, mask)
    return [ImageChops.invert(merged)] if settings.merge_invert == "Merge and Invert" else [merged]


def _box_mask(box: tuple[float, float, float, float], size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([int(v) for v in box], fill=255)
    return mask


def _dilate_erode(mask: Image.Image, value: int) -> Image.Image:
    """Dilate by a `value` x `value` square (erode for a negative value), as ADetailer."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (abs(value), abs(value)))
    arr = np.asarray(mask)
    out = cv2.dilate(arr, kernel, iterations=1) if value > 0 else cv2.erode(arr, kernel)
    return Image.fromarray(out)
