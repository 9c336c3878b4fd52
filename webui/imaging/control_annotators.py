"""ControlNet's preprocessors that need annotator weights, as sd-webui-controlnet lists them.

Names, labels, slider ranges and control types are the extension's
(`scripts/preprocessor/legacy/preprocessor_compiled.py`): `depth` (label `depth_midas`),
`depth_anything`, `depth_anything_v2`,
the `openpose` family, `lineart` (`lineart_realistic`), `lineart_coarse`, `lineart_anime`,
`hed` (`softedge_hed`), `hed_safe`, `pidinet` (`softedge_pidinet`), `pidinet_safe`,
`scribble_hed`, `pidinet_scribble`, `normal_bae`, `mlsd`, `oneformer_ade20k`
(`seg_ofade20k`), `oneformer_coco` (`seg_ofcoco`). Each entry here is only the
description (`control_preprocessors.py` makes them `Preprocessor`s with `annotator` set);
the networks, their files in `models/ControlNet/annotators` and the download are
`model_manager/annotators.py`, run by the worker (jobs) or the annotator cache of the
context (/controlnet/detect, 💥).

`REFUSED` names the extension's annotators this server does not build and why; a unit
asking for one gets that reason (a 422), not "unknown preprocessor".

This module must never import torch, controlnet_aux or a UI library.
"""

from __future__ import annotations

from dataclasses import dataclass

# (label, value, minimum, maximum, step)
SliderSpec = tuple[str, float, float, float, float]
_RES: SliderSpec = ("Resolution", 512, 64, 2048, 1)


@dataclass(frozen=True)
class AnnotatorEntry:
    name: str  # the extension's module name
    label: str
    tags: tuple[str, ...]
    resolution: SliderSpec | None = None  # None: hidden (the extension's), 512 is used
    slider_1: SliderSpec | None = None
    slider_2: SliderSpec | None = None


ANNOTATOR_ENTRIES: tuple[AnnotatorEntry, ...] = (
    AnnotatorEntry("depth", "depth_midas", ("Depth",), _RES),
    AnnotatorEntry("depth_anything", "depth_anything", ("Depth",)),
    AnnotatorEntry("depth_anything_v2", "depth_anything_v2", ("Depth",)),
    AnnotatorEntry("openpose", "openpose", ("OpenPose",), _RES),
    AnnotatorEntry("openpose_face", "openpose_face", ("OpenPose",)),
    AnnotatorEntry("openpose_faceonly", "openpose_faceonly", ("OpenPose",)),
    AnnotatorEntry("openpose_full", "openpose_full", ("OpenPose",), _RES),
    AnnotatorEntry("openpose_hand", "openpose_hand", ("OpenPose",)),
    AnnotatorEntry("dw_openpose_full", "dw_openpose_full", ("OpenPose",), _RES),
    AnnotatorEntry("lineart", "lineart_realistic", ("Lineart",)),
    AnnotatorEntry("lineart_coarse", "lineart_coarse", ("Lineart",)),
    AnnotatorEntry("lineart_anime", "lineart_anime", ("Lineart",)),
    AnnotatorEntry("hed", "softedge_hed", ("SoftEdge",), _RES),
    AnnotatorEntry("hed_safe", "softedge_hedsafe", ("SoftEdge",), _RES),
    AnnotatorEntry("pidinet", "softedge_pidinet", ("SoftEdge",)),
    AnnotatorEntry("pidinet_safe", "softedge_pidisafe", ("SoftEdge",)),
    AnnotatorEntry("scribble_hed", "scribble_hed", ("Scribble",), _RES),
    AnnotatorEntry("pidinet_scribble", "scribble_pidinet", ("Scribble",)),
    AnnotatorEntry("normal_bae", "normal_bae", ("NormalMap",)),
    AnnotatorEntry("mlsd", "mlsd", ("MLSD",), _RES,
                   ("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
                   ("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01)),
    AnnotatorEntry("oneformer_ade20k", "seg_ofade20k", ("Segmentation",)),
    AnnotatorEntry("oneformer_coco", "seg_ofcoco", ("Segmentation",)),
)  # fmt: skip

# the extension's control types these add: (name, default preprocessor, model filter word)
ANNOTATOR_CONTROL_TYPES = (("Depth", "depth", "depth"), ("OpenPose", "openpose_full", "openpose"),
                           ("MLSD", "mlsd", "mlsd"), ("NormalMap", "normal_bae", "normalbae"),
                           ("SoftEdge", "pidinet", "softedge"),
                           ("Segmentation", "oneformer_ade20k", "seg"))  # fmt: skip

_UNIFORMER = ("seg_ufade20k (UniFormer, upernet_global_small.pth) needs mmseg and mmcv's "
              "UperNet, which no maintained library this server uses provides; use "
              "seg_ofade20k (OneFormer: the same ADE20K classes and colours)")  # fmt: skip
REFUSED: dict[str, str] = {
    "seg_ufade20k": _UNIFORMER,
    "segmentation": _UNIFORMER,
    "inpaint_only+lama": "inpaint_only+lama needs the LaMa inpainting model (ControlNetLama.pth, "
    "sd-webui-controlnet's annotator), which this build cannot run: use inpaint_only",
}
