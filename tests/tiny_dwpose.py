"""Tiny DWPose ONNX files with the real inputs and outputs, built at test time.

- `yolox_l.onnx`: input `images` (1, 3, 640, 640), output `output` (1, 8400, 85): one row
  per anchor of the stride 8, 16, 32 grids (x, y, log w, log h, objectness, 80 class
  scores), as YOLOX-L exports. The rows are constant (plus 0 x the image's mean): one anchor
  of the stride-32 grid holds a person box given in letterbox pixels, the rest score 0.
- `dw-ll_ucoco_384.onnx`: input `input` (1, 3, 384, 288), outputs `simcc_x` (1, 133, 576)
  and `simcc_y` (1, 133, 768), as RTMPose exports. Constant too: each given keypoint has
  one peak of 0.9 at its bin in each row, the others 0 (not seen).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

DET_SIDE, POSE_W, POSE_H, KEYPOINTS = 640, 288, 384, 133

# A person both files agree on (`save_tiny_person`), in a 256 x 384 picture (the map at
# processor resolution 256; multiples of 64: no pad).
W, H = 256, 384
BOX = (64.0, 48.0, 192.0, 336.0)  # the person, in those pixels
RATIO = 640 / H  # the letterbox's scale
# the crop of BOX: centre (128, 192), grown by 1.25 to 160 x 360, widened to 3:4: 270 x 360
STEP = 270 / 576  # image pixels per SimCC bin (576 bins across the crop's 270 pixels)
ORIGIN = (128 - 270 / 2, 192 - 360 / 2)
# COCO-WholeBody keypoints placed (in image pixels): body, 3 face points, 2+2 hand points
WANTED = {0: (128, 80), 1: (138, 70), 2: (118, 70), 3: (148, 75), 4: (108, 75),
          5: (168, 130), 6: (88, 130), 7: (178, 190), 8: (78, 190), 9: (180, 240),
          10: (76, 240), 11: (150, 240), 12: (106, 240), 13: (152, 290), 14: (104, 290),
          15: (154, 330), 16: (102, 330), 23: (112, 92), 24: (144, 92), 25: (128, 104),
          91: (196, 250), 92: (204, 262), 112: (60, 250), 113: (52, 262)}  # fmt: skip
BINS = {k: (round((x - ORIGIN[0]) / STEP), round((y - ORIGIN[1]) / STEP))
        for k, (x, y) in WANTED.items()}  # fmt: skip


def at(k: int) -> tuple[float, float]:
    """Where keypoint k lands: its bins back in image pixels."""
    bx, by = BINS[k]
    return ORIGIN[0] + bx * STEP, ORIGIN[1] + by * STEP


def _constant_model(path: Path, name: str, shape: tuple, outputs: dict[str, np.ndarray]) -> Path:
    """An ONNX model whose outputs are the given arrays (+ 0 x the input's mean)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceMean", [name], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["nothing"])]  # fmt: skip
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    outs = []
    for out, value in outputs.items():
        nodes.append(helper.make_node("Add", [f"{out}_value", "nothing"], [out]))
        inits.append(numpy_helper.from_array(value.astype(np.float32), f"{out}_value"))
        outs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, list(value.shape)))
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))]
    graph = helper.make_graph(nodes, path.stem, inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def save_tiny_detector(folder: Path, box: tuple[float, float, float, float] | None,
                       score: float = 0.9, cls: int = 0) -> Path:  # fmt: skip
    """`yolox_l.onnx` finding `box` (x0, y0, x1, y1 in the 640x640 letterbox), of class
    `cls` with objectness and class score `score`; no box: nothing found."""
    cells = sum((DET_SIDE // s) ** 2 for s in (8, 16, 32))
    rows = np.zeros((1, cells, 85), np.float32)
    if box is not None:
        x0, y0, x1, y1 = box
        cx, cy, stride = (x0 + x1) / 2, (y0 + y1) / 2, 32
        gx, gy = int(cx // stride), int(cy // stride)
        row = cells - (DET_SIDE // stride) ** 2 + gy * (DET_SIDE // stride) + gx
        rows[0, row, :4] = (cx / stride - gx, cy / stride - gy,
                            math.log((x1 - x0) / stride), math.log((y1 - y0) / stride))  # fmt: skip
        rows[0, row, 4] = rows[0, row, 5 + cls] = score
    return _constant_model(folder / "yolox_l.onnx", "images", (1, 3, DET_SIDE, DET_SIDE),
                           {"output": rows})  # fmt: skip


def save_tiny_pose(folder: Path, bins: dict[int, tuple[int, int]]) -> Path:
    """`dw-ll_ucoco_384.onnx` putting COCO-WholeBody keypoint k at SimCC bins (bx, by)."""
    simcc_x = np.zeros((1, KEYPOINTS, POSE_W * 2), np.float32)
    simcc_y = np.zeros((1, KEYPOINTS, POSE_H * 2), np.float32)
    for k, (bx, by) in bins.items():
        simcc_x[0, k, bx] = simcc_y[0, k, by] = 0.9
    return _constant_model(folder / "dw-ll_ucoco_384.onnx", "input", (1, 3, POSE_H, POSE_W),
                           {"simcc_x": simcc_x, "simcc_y": simcc_y})  # fmt: skip


def save_tiny_person(folder: Path) -> Path:
    """Both files, finding the person BOX and putting the keypoints WANTED at BINS."""
    save_tiny_detector(folder, tuple(v * RATIO for v in BOX))
    save_tiny_pose(folder, BINS)
    return folder
