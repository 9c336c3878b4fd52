"""The annotator weights of ControlNet's preprocessors: which files, where, and their download.

Files are read from `models/ControlNet/annotators` under the names lllyasviel's
`lllyasviel/Annotators` repository (and controlnet_aux) use: `ControlNetHED.pth`,
`table5_pidinet.pth`, `mlsd_large_512_fp32.pth`, `sk_model.pth`, `sk_model2.pth`,
`netG.pth`, `body_pose_model.pth`, `hand_pose_model.pth`, `facenet.pth`, `scannet.pt`,
`dpt_hybrid-midas-501f0c75.pt`; Depth Anything's `depth_anything_vitl14.pth` (from the
LiheYoung/Depth-Anything space's `checkpoints/`) and `depth_anything_v2_vitl.pth` (from
depth-anything/Depth-Anything-V2-Large), DWPose's `yolox_l.onnx` and `dw-ll_ucoco_384.onnx`
(from yzd-v/DWPose): `SOURCES`. A `.safetensors` of the same stem is taken first (not for
`.onnx` files). OneFormer's are hub folders (`annotator_folders.py`: transformers'
layout, their own repositories).

`ensure_files` downloads a missing file from its repository on first use (huggingface_hub,
its progress in the log and the caller's `report`), into a temporary file of the folder
renamed when complete; offline, or when the download fails, it raises
`AnnotatorMissingError` naming the file and the folder. `offline()` says whether a
download may be tried at all (HF_HUB_OFFLINE), for the request-side check that answers a
422 before a job is queued.

This module must never import torch or a UI library.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .annotator_folders import HUB_FOLDERS, complete, describe, download_folder

log = logging.getLogger(__name__)
REPO = "lllyasviel/Annotators"
ANNOTATOR_FOLDER = "annotators"  # under models/ControlNet
_BODY, _HAND, _FACE = "body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"
# module name -> the files its network needs
FILES: dict[str, tuple[str, ...]] = {
    "depth": ("dpt_hybrid-midas-501f0c75.pt",),
    "openpose": (_BODY,),
    "openpose_hand": (_BODY, _HAND),
    "openpose_face": (_BODY, _FACE),
    "openpose_faceonly": (_BODY, _FACE),
    "openpose_full": (_BODY, _HAND, _FACE),
    "lineart": ("sk_model.pth",),
    "lineart_coarse": ("sk_model2.pth",),
    "lineart_anime": ("netG.pth",),
    "hed": ("ControlNetHED.pth",),
    "hed_safe": ("ControlNetHED.pth",),
    "scribble_hed": ("ControlNetHED.pth",),
    "pidinet": ("table5_pidinet.pth",),
    "pidinet_safe": ("table5_pidinet.pth",),
    "pidinet_scribble": ("table5_pidinet.pth",),
    "normal_bae": ("scannet.pt",),
    "mlsd": ("mlsd_large_512_fp32.pth",),
    "dw_openpose_full": ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"),
    "depth_anything": ("depth_anything_vitl14.pth",),
    "depth_anything_v2": ("depth_anything_v2_vitl.pth",),
    "oneformer_ade20k": ("oneformer_ade20k_swin_large",),  # hub folders (annotator_folders)
    "oneformer_coco": ("oneformer_coco_swin_large",),
}
# files from elsewhere than lllyasviel/Annotators: name -> (repo, path in it, repo type)
SOURCES: dict[str, tuple[str, str, str]] = {
    "depth_anything_vitl14.pth": ("LiheYoung/Depth-Anything",
                                  "checkpoints/depth_anything_vitl14.pth", "space"),
    "depth_anything_v2_vitl.pth": ("depth-anything/Depth-Anything-V2-Large",
                                   "depth_anything_v2_vitl.pth", "model"),
    "yolox_l.onnx": ("yzd-v/DWPose", "yolox_l.onnx", "model"),
    "dw-ll_ucoco_384.onnx": ("yzd-v/DWPose", "dw-ll_ucoco_384.onnx", "model"),
}  # fmt: skip
Report = Callable[[str], None]
Download = Callable[[str, Path, Report], Path]


class AnnotatorMissingError(UserError):
    """An annotator's weights are not in the folder and cannot be downloaded."""

    def __init__(self, name: str, folder: Path, reason: str):
        super().__init__(f"annotator weights {name} not found in {folder} ({reason}): put "
                         f"{where_from(name)} into {folder}")  # fmt: skip
        self.file, self.folder = name, folder


def source(name: str) -> tuple[str, str, str]:
    """(repo, path in it, repo type) that `name` is downloaded from."""
    return SOURCES.get(name, (REPO, name, "model"))


def source_url(name: str) -> str:
    repo, path, kind = source(name)
    return f"huggingface.co/{'spaces/' if kind == 'space' else ''}{repo}"


def annotator_folder(controlnet_dir: Path) -> Path:
    return Path(controlnet_dir) / ANNOTATOR_FOLDER


def where_from(name: str) -> str:
    """What to put into the folder and where it is published, for a message."""
    return describe(name) if name in HUB_FOLDERS else f"{name} from {source_url(name)}"


def weight_file(folder: Path, name: str) -> Path | None:
    """The file of `name` in the folder (a pickle's .safetensors twin first), None if absent;
    a hub folder's path when it is complete."""
    if name in HUB_FOLDERS:
        return folder / name if complete(folder / name) else None
    twin = [folder / f"{Path(name).stem}.safetensors"] if Path(name).suffix != ".onnx" else []
    for path in (*twin, folder / name):
        if path.is_file():
            return path
    return None


def missing_files(folder: Path, module: str) -> list[str]:
    return [name for name in FILES.get(module, ()) if weight_file(folder, name) is None]


def offline() -> bool:
    """Whether huggingface_hub is told not to go online (HF_HUB_OFFLINE)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _reporting_bar(name: str, report: Report, repo: str | None = None) -> type:
    """huggingface_hub's progress bar that also tells `report` each new percent."""
    from huggingface_hub.utils import tqdm

    repo = repo or source(name)[0]

    class ReportingBar(tqdm):
        shown, seen = -1, 0  # counted here: a disabled bar (no terminal) counts nothing

        def update(self, n: float | None = 1) -> bool | None:
            done = super().update(n)
            self.seen += n or 0
            share = int(self.seen * 100 / self.total) if self.total else -1
            if share != self.shown and share >= 0:
                self.shown = share
                report(f"Downloading {name} from {repo}: {share}% of {self.total >> 20} MB")
            return done

    return ReportingBar


def hub_download(name: str, folder: Path, report: Report) -> Path:
    """`name` from its repository (`source`) into `folder`, atomically (huggingface_hub); a
    hub folder from its own repository."""
    from huggingface_hub import hf_hub_download

    if name in HUB_FOLDERS:
        return download_folder(
            name, folder, report, _reporting_bar(name, report, HUB_FOLDERS[name])
        )
    repo, path, kind = source(name)
    folder.mkdir(parents=True, exist_ok=True)
    report(f"Downloading {name} from {repo}")
    log.info("Downloading annotator %s from %s into %s", name, repo, folder)
    space = {"repo_type": kind} if kind != "model" else {}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as temp:
        fetched = Path(hf_hub_download(repo, path, local_dir=temp, **space,
                                       tqdm_class=_reporting_bar(name, report, repo)))  # fmt: skip
        partial = folder / f".{name}.partial"
        shutil.move(str(fetched), partial)
        os.replace(partial, folder / name)
    log.info("Downloaded annotator %s", name)
    return folder / name


def ensure_files(folder: Path, module: str, *, download: Download = hub_download,
                 report: Report | None = None) -> dict[str, Path]:  # fmt: skip
    """name -> path of every file the module needs, downloading the missing ones."""
    found: dict[str, Path] = {}
    for name in FILES.get(module, ()):
        path = weight_file(folder, name)
        if path is None:
            if offline():
                raise AnnotatorMissingError(name, folder, "offline: HF_HUB_OFFLINE is set")
            try:
                path = download(name, folder, report or (lambda text: None))
            except Exception as exc:  # no network, no such file, disk full: name the file
                log.warning("annotator %s: download failed: %s", name, exc)
                raise AnnotatorMissingError(name, folder, f"download failed: {exc}") from None
        found[name] = path
    return found
