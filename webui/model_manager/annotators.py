"""ControlNet's annotators with weights (depth, openpose, lineart, HED, PiDiNet, normal, MLSD,
OneFormer segmentation).

Depth Anything (v1, v2) is transformers' network, in `annotator_depth_anything.py`.

The networks and their detection code are controlnet_aux's (the optional extra
`annotators`): its classes are built here and given weights read from
`models/ControlNet/annotators` (`annotator_files.py`: names, download) through the
project's restricted unpickler (`loader._load_ckpt`) or safetensors; controlnet_aux's own
`from_pretrained` (plain `torch.load`, its own cache folder) is never called. The
detectors are then called as sd-webui-controlnet calls them (module `hed_safe`: safe
steps, `pidinet_scribble`: the scribble post-processing, `openpose_hand`: body and hands,
`mlsd`: thresholds a and b, ...); `dw_openpose_full` is DWPose's two ONNX networks
(`annotator_dwpose.py`); OneFormer is transformers' (`annotator_oneformer.py`, no
controlnet_aux needed). Each map is made at the unit's processor resolution
(shorter side; 512 when the module hides its resolution slider), RGB uint8.

`AnnotatorCache` keeps the last 2 networks used (by files and their modification times)
on the given device; `run` is thread-safe (the worker's jobs, /controlnet/detect and the
UI's 💥 share one cache); `clear` releases them (the unload job, with the other models).

This module must never import a UI library.
"""

from __future__ import annotations

import functools
import logging
import threading
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..errors import UserError
from .annotator_files import Download, Report, ensure_files, hub_download
from .annotator_oneformer import builder as oneformer_builder
from .loader import _load_ckpt
from .seg_palettes import ADE20K, COCO

log = logging.getLogger(__name__)
Paths = dict[str, Path]


class AnnotatorError(UserError):
    """An annotator that cannot run here (library missing, weights that do not fit)."""


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or a pickle through the restricted
    unpickler; `{"model": ...}` / `{"state_dict": ...}` wrappers and `module.` prefixes
    (DataParallel) taken off."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = _load_ckpt(path)
    for key in ("model", "state_dict"):
        while isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _load(net: torch.nn.Module, state: dict, name: str) -> torch.nn.Module:
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        said = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise AnnotatorError(f"annotator weights {name} do not fit its network: {said}") from None
    return net.float().eval()


def _file(paths: Paths, name: str) -> tuple[dict, str]:
    return read_state(paths[name]), paths[name].name


def _hed(paths: Paths) -> Any:
    from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector

    return HEDdetector(_load(ControlNetHED_Apache2(), *_file(paths, "ControlNetHED.pth")))


def _pidinet(paths: Paths) -> Any:
    from controlnet_aux.pidi import PidiNetDetector
    from controlnet_aux.pidi.model import pidinet

    return PidiNetDetector(_load(pidinet(), *_file(paths, "table5_pidinet.pth")))


def _mlsd(paths: Paths) -> Any:
    from controlnet_aux.mlsd import MLSDdetector
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return MLSDdetector(_load(MobileV2_MLSD_Large(), *_file(paths, "mlsd_large_512_fp32.pth")))


def _lineart(name: str, paths: Paths) -> Any:
    from controlnet_aux.lineart import Generator, LineartDetector

    net = _load(Generator(3, 1, 3), *_file(paths, name))
    return LineartDetector(net, net)  # the realistic and the coarse net: one of them


def _lineart_anime(paths: Paths) -> Any:
    from controlnet_aux.lineart_anime import LineartAnimeDetector, UnetGenerator

    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    net = UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)
    return LineartAnimeDetector(_load(net, *_file(paths, "netG.pth")))


def _part(cls: type, net: torch.nn.Module, state: dict, name: str, **fields: Any) -> Any:
    """A controlnet_aux openpose part (Body, Hand, Face) around a net loaded here: their
    constructors would torch.load the file themselves."""
    from controlnet_aux.open_pose.util import transfer

    part = cls.__new__(cls)
    try:
        state = transfer(net, state) if cls.__name__ != "Face" else state
    except KeyError as exc:
        raise AnnotatorError(f"annotator weights {name} do not fit its network "
                             f"(no {exc})") from None  # fmt: skip
    part.model = _load(net, state, name)
    for key, value in fields.items():
        setattr(part, key, value)
    return part


def _openpose(paths: Paths) -> Any:
    from controlnet_aux.open_pose import OpenposeDetector
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.face import Face, FaceNet
    from controlnet_aux.open_pose.face import params as face_params
    from controlnet_aux.open_pose.hand import Hand
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    body = _part(Body, bodypose_model(), *_file(paths, "body_pose_model.pth"))
    hand = face = None
    if "hand_pose_model.pth" in paths:
        hand = _part(Hand, handpose_model(), *_file(paths, "hand_pose_model.pth"))
    if "facenet.pth" in paths:
        face = _part(Face, FaceNet(), *_file(paths, "facenet.pth"),
                     inference_size=face_params["inference_img_size"],
                     sigma=face_params["gaussian_sigma"],
                     threshold=face_params["heatmap_peak_thresh"])  # fmt: skip
    return OpenposeDetector(body, hand, face)


def _normal_bae(paths: Paths) -> Any:
    from controlnet_aux.normalbae import NormalBaeDetector
    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                 sampling_ratio=0.4, importance_ratio=0.7)  # fmt: skip
    return NormalBaeDetector(_load(NNET(args), *_file(paths, "scannet.pt")))


class _Midas(torch.nn.Module):
    """MiDaS's DPT as controlnet_aux's MidasDetector calls it (its MiDaSInference loads
    the file with torch.load)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _midas(paths: Paths) -> Any:
    from controlnet_aux.midas import MidasDetector
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    net = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
    return MidasDetector(_Midas(_load(net, *_file(paths, "dpt_hybrid-midas-501f0c75.pt"))))


def _dwpose(paths: Paths) -> Any:
    from .annotator_dwpose import build  # ONNX networks, onnxruntime (annotator_dwpose.py)

    return build(paths)


def _depth_anything(name: str, version: int, paths: Paths) -> Any:
    from .annotator_depth_anything import load_detector

    return load_detector(*_file(paths, name), version)


@dataclass(frozen=True)
class Annotator:
    model: str  # networks of the same model and files are shared (openpose_*, hed_*)
    build: Callable[[Paths], Any]
    call: Callable[..., Any]  # (detector, image, res, a, b) -> map
    aux: bool = True  # built from controlnet_aux (else transformers, onnxruntime)


def _sizes(res: int) -> dict[str, Any]:
    return {"detect_resolution": res, "image_resolution": res, "output_type": "np"}


def _pose(body: bool, hand: bool, face: bool) -> Annotator:
    def call(det, img, res, a, b):
        return det(img, include_body=body, include_hand=hand, include_face=face, **_sizes(res))

    return Annotator("openpose", _openpose, call)


ANNOTATORS: dict[str, Annotator] = {
    "depth": Annotator("midas", _midas, lambda d, img, res, a, b: d(img, **_sizes(res))),
    "openpose": _pose(True, False, False),
    "openpose_hand": _pose(True, True, False),
    "openpose_face": _pose(True, False, True),
    "openpose_faceonly": _pose(False, False, True),
    "openpose_full": _pose(True, True, True),
    "lineart": Annotator("lineart", functools.partial(_lineart, "sk_model.pth"),
                         lambda d, img, res, a, b: d(img, coarse=False, **_sizes(res))),
    "lineart_coarse": Annotator("lineart_coarse", functools.partial(_lineart, "sk_model2.pth"),
                                lambda d, img, res, a, b: d(img, coarse=True, **_sizes(res))),
    "lineart_anime": Annotator("lineart_anime", _lineart_anime,
                               lambda d, img, res, a, b: d(img, **_sizes(res))),
    "hed": Annotator("hed", _hed, lambda d, img, res, a, b: d(img, **_sizes(res))),
    "hed_safe": Annotator("hed", _hed, lambda d, img, res, a, b: d(img, safe=True, **_sizes(res))),
    "scribble_hed": Annotator("hed", _hed,
                              lambda d, img, res, a, b: d(img, scribble=True, **_sizes(res))),
    "pidinet": Annotator("pidinet", _pidinet, lambda d, img, res, a, b: d(img, **_sizes(res))),
    "pidinet_safe": Annotator("pidinet", _pidinet,
                              lambda d, img, res, a, b: d(img, safe=True, **_sizes(res))),
    "pidinet_scribble": Annotator("pidinet", _pidinet, lambda d, img, res, a, b: d(
        img, scribble=True, **_sizes(res))),
    "normal_bae": Annotator("normal_bae", _normal_bae,
                            lambda d, img, res, a, b: d(img, **_sizes(res))),
    "mlsd": Annotator("mlsd", _mlsd,
                      lambda d, img, res, a, b: d(img, thr_v=a, thr_d=b, **_sizes(res))),
    "dw_openpose_full": Annotator("dwpose", _dwpose, lambda d, img, res, a, b: d(img, res)),
    "depth_anything": Annotator("depth_anything", functools.partial(
        _depth_anything, "depth_anything_vitl14.pth", 1), lambda d, img, res, a, b: d(img, res),
        aux=False),
    "depth_anything_v2": Annotator("depth_anything_v2", functools.partial(
        _depth_anything, "depth_anything_v2_vitl.pth", 2), lambda d, img, res, a, b: d(img, res),
        aux=False),
}  # fmt: skip
ANNOTATORS.update({  # transformers' OneFormer, from a hub folder (annotator_folders.py)
    "oneformer_ade20k": Annotator("oneformer_ade20k", oneformer_builder(
        "oneformer_ade20k_swin_large", ADE20K), lambda d, img, res, a, b: d(img, res), aux=False),
    "oneformer_coco": Annotator("oneformer_coco", oneformer_builder(
        "oneformer_coco_swin_large", COCO), lambda d, img, res, a, b: d(img, res), aux=False),
})  # fmt: skip


def _rgb_at(detected: Any, shape: tuple[int, ...], res: int) -> np.ndarray:
    """The map as RGB uint8 with its shorter side at `res` and the image's aspect
    (controlnet_aux rounds its sizes to multiples of 64); binary maps stay binary."""
    out = np.asarray(detected[0] if isinstance(detected, tuple) else detected)
    out = out.astype(np.uint8) if out.dtype != np.uint8 else out
    if out.ndim == 2:
        out = out[:, :, None]
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    h, w = shape[:2]
    k = res / min(h, w)
    size = (max(int(round(w * k)), 1), max(int(round(h * k)), 1))
    if (out.shape[1], out.shape[0]) != size:
        binary = bool(((out == 0) | (out == 255)).all())  # scribble, MLSD: kept binary
        out = cv2.resize(out, size, interpolation=cv2.INTER_NEAREST if binary else cv2.INTER_LINEAR)
    return np.ascontiguousarray(out[:, :, :3])


def _move(detector: Any, device: torch.device) -> None:
    """Every net of a detector (or of its parts: openpose's body, hand, face) to `device`."""
    for value in vars(detector).values():
        net = value if isinstance(value, torch.nn.Module) else getattr(value, "model", None)
        if isinstance(net, torch.nn.Module):
            net.to(device)


def _library() -> None:
    try:
        with warnings.catch_warnings():  # its import re-registers timm models, loudly
            warnings.simplefilter("ignore")
            import controlnet_aux  # noqa: F401
    except ImportError as exc:
        raise AnnotatorError("the annotators need controlnet_aux: pip install controlnet_aux "
                             f"(the 'annotators' extra) ({exc})") from None  # fmt: skip


class AnnotatorCache:
    """The last `size` annotator networks used, run one at a time."""

    def __init__(self, folder: Path, device: str | torch.device = "cpu", size: int = 2,
                 download: Download = hub_download):  # fmt: skip
        self.folder, self.device, self.size = Path(folder), torch.device(device), size
        self.download = download
        self._models: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, module: str, image: np.ndarray, res: int, a: float, b: float,
            report: Report | None = None) -> np.ndarray:  # fmt: skip
        """The map of `module` for an RGB uint8 image at processor resolution `res`."""
        spec = ANNOTATORS.get(module)
        if spec is None:
            raise AnnotatorError(f"{module} is not an annotator")
        res = int(res) if res and res >= 64 else 512
        with self._lock:
            paths = ensure_files(self.folder, module, download=self.download, report=report)
            detector = self._detector(spec, paths)
            with torch.no_grad():
                detected = spec.call(detector, np.ascontiguousarray(image[:, :, :3]), res,
                                     float(a), float(b))  # fmt: skip
        return _rgb_at(detected, image.shape, res)

    def _detector(self, spec: Annotator, paths: Paths) -> Any:
        key = (spec.model, *sorted((str(p), p.stat().st_mtime_ns) for p in paths.values()))
        detector = self._models.pop(key, None)
        if detector is None:
            if spec.aux:
                _library()
            log.info("Loading annotator %s (%s)", spec.model, ", ".join(sorted(paths)))
            while len(self._models) >= self.size:
                self._models.popitem(last=False)
            detector = spec.build(paths)
            _move(detector, self.device)
        self._models[key] = detector
        return detector

    def loaded(self) -> list[str]:
        return [key[0] for key in self._models]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()
