"""Random-weight annotator files for tests, written as lllyasviel/Annotators ships them.

`save_random_annotator(folder, module)` builds the module's network with controlnet_aux's
own classes (full architecture: they take no size settings) with seeded random weights
and saves it under the real file name and in the file's real layout: a bare state dict
(`ControlNetHED.pth`, `mlsd_large_512_fp32.pth`, `sk_model.pth`, ...), `{"state_dict":
{"module.*": ...}}` (`table5_pidinet.pth`), `{"model": ...}` (`scannet.pt`), the openpose
files without their first key component (what `util.transfer` maps back). Sizes: HED 56
MB, PiDiNet 3 MB, MLSD 6 MB, lineart 17 MB; openpose, normal_bae, lineart_anime and MiDaS
are 200-500 MB and are for a manual check, not for the test suite.

This module must never import a UI library.
"""

from __future__ import annotations

import functools
import types
from pathlib import Path

import torch

from .annotator_files import FILES


def _nets(name: str) -> torch.nn.Module:
    if name == "ControlNetHED.pth":
        from controlnet_aux.hed import ControlNetHED_Apache2

        return ControlNetHED_Apache2()
    if name == "table5_pidinet.pth":
        from controlnet_aux.pidi.model import pidinet

        return pidinet()
    if name == "mlsd_large_512_fp32.pth":
        from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

        return MobileV2_MLSD_Large()
    if name in ("sk_model.pth", "sk_model2.pth"):
        from controlnet_aux.lineart import Generator

        return Generator(3, 1, 3)
    if name == "netG.pth":
        from controlnet_aux.lineart_anime import UnetGenerator

        norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
        return UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)
    if name == "body_pose_model.pth":
        from controlnet_aux.open_pose.model import bodypose_model

        return bodypose_model()
    if name == "hand_pose_model.pth":
        from controlnet_aux.open_pose.model import handpose_model

        return handpose_model()
    if name == "facenet.pth":
        from controlnet_aux.open_pose.face import FaceNet

        return FaceNet()
    if name == "scannet.pt":
        from controlnet_aux.normalbae.nets.NNET import NNET

        return NNET(types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                          sampling_ratio=0.4, importance_ratio=0.7))  # fmt: skip
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    return DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)


def _as_shipped(name: str, state: dict) -> object:
    if name == "table5_pidinet.pth":
        return {"epoch": 14, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    if name == "scannet.pt":
        return {"model": state}
    if name in ("body_pose_model.pth", "hand_pose_model.pth"):
        return {k.split(".", 1)[1]: v for k, v in state.items()}
    return state


def save_random_annotator(folder: Path, module: str, seed: int = 0) -> list[Path]:
    """The module's weight files with random weights; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in FILES[module]:
        torch.manual_seed(seed)
        state = {k: v.detach().clone() for k, v in _nets(name).state_dict().items()}
        torch.save(_as_shipped(name, state), folder / name)
        written.append(folder / name)
    return written
