"""A tiny YOLOv8-layout ONNX detector written at test time, for the detailer's tests.

`write_tiny_detector` exports (torch's ONNX exporter) a model with fixed candidate boxes
whose scores it computes from the picture: the mean of red minus green inside each box,
clamped to [0, 1] (or a box's `floor` when that is higher). A red square drawn in a box is
"found" there; a grey picture gives no detection. The output is what `yolo export format=onnx` writes: (1, 4 + classes, N) with
box centre x, y, width, height in the 640x640 letterboxed input's pixels, then one score
per class (one class here).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

SIZE = 640


class _Detector(torch.nn.Module):
    def __init__(self, boxes: list[tuple[int, int, int, int]], floors: list[float], seg: bool):
        super().__init__()
        self.seg = seg
        self.boxes = boxes  # x1, y1, x2, y2 in input pixels
        self.floors = floors
        centres = [[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes]
        self.register_buffer("geometry", torch.tensor(centres, dtype=torch.float32).T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = []
        for (x1, y1, x2, y2), floor in zip(self.boxes, self.floors, strict=True):
            region = x[:, :, y1:y2, x1:x2]
            scores.append((region[:, 0] - region[:, 1]).mean(dim=(1, 2)).clamp(floor, 1))
        score = torch.stack(scores, dim=1).unsqueeze(1)  # (batch, 1 class, N)
        geometry = self.geometry.unsqueeze(0).expand(x.shape[0], -1, -1)
        out = torch.cat([geometry, score], dim=1)
        if not self.seg:
            return out
        coefficients = torch.full_like(score, 5.0).expand(-1, 32, -1)  # never scores
        return torch.cat([out, coefficients], dim=1), x[:, :1, ::4, ::4].expand(-1, 32, -1, -1)


def write_tiny_detector(
    path: Path,
    boxes: list[tuple[int, int, int, int]],
    floors: list[float] | None = None,
    seg: bool = False,
) -> Path:
    """An ONNX detector at `path` with candidate `boxes` (x1, y1, x2, y2, input pixels)
    and each box's lowest score (`floors`, default 0). `seg`: the layout of a segmentation
    export (32 mask coefficients after the scores, and a second output of prototypes)."""
    floors = floors or [0.0] * len(boxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = ["output0", "output1"] if seg else ["output0"]
        torch.onnx.export(_Detector(boxes, floors, seg), torch.zeros(1, 3, SIZE, SIZE), str(path),
                          dynamo=False, input_names=["images"], output_names=names)  # fmt: skip
    return path
