"""Annotators whose weights are a hub folder (transformers' layout), not one file.

OneFormer (`seg_ofade20k`, `seg_ofcoco`) runs as transformers'
`OneFormerForUniversalSegmentation`, whose published weights are SHI Labs' hub repositories
`shi-labs/oneformer_ade20k_swin_large` and `shi-labs/oneformer_coco_swin_large`. Each is a
folder of `models/ControlNet/annotators` under the repository's name, holding
`config.json`, `preprocessor_config.json` and `model.safetensors` (or `pytorch_model.bin`,
which transformers reads with `torch.load(weights_only=True)`). sd-webui-controlnet's own
files (detectron2 checkpoints such as `250_16_swin_l_oneformer_ade20k_160k.pth`) are not
read: they need a key converter of the whole Swin-L OneFormer, which is not built.

`download_folder` fetches the missing files of such a folder from its repository one by
one (huggingface_hub, progress to the caller's `report`), each into a temporary folder and
renamed into place when complete, the weights last: a folder is complete (`complete`)
only when every file is there.

This module must never import torch or a UI library.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
# folder name (under models/ControlNet/annotators) -> its hub repository
HUB_FOLDERS: dict[str, str] = {
    "oneformer_ade20k_swin_large": "shi-labs/oneformer_ade20k_swin_large",
    "oneformer_coco_swin_large": "shi-labs/oneformer_coco_swin_large",
}
CONFIG_FILES = ("config.json", "preprocessor_config.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the first found is used
Report = Callable[[str], None]


def complete(path: Path) -> bool:
    """Whether a folder has its configs and one of the weight files."""
    return all((path / name).is_file() for name in CONFIG_FILES) and _has_weights(path)


def _has_weights(path: Path) -> bool:
    return any((path / name).is_file() for name in WEIGHT_FILES)


def describe(name: str) -> str:
    """What to put where, for a message: the folder, its files and its repository."""
    return (f"the folder {name} (config.json, preprocessor_config.json and model.safetensors "
            f"or pytorch_model.bin from huggingface.co/{HUB_FOLDERS[name]})")  # fmt: skip


def _fetch(repo: str, name: str, into: Path, bar: type | None) -> Path:
    from huggingface_hub import hf_hub_download

    if bar is None:
        return Path(hf_hub_download(repo, name, local_dir=str(into)))
    return Path(hf_hub_download(repo, name, local_dir=str(into), tqdm_class=bar))


def _weights(repo: str, into: Path, bar: type) -> Path:
    """model.safetensors, or pytorch_model.bin when the repository has no safetensors."""
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return _fetch(repo, WEIGHT_FILES[0], into, bar)
    except EntryNotFoundError:
        return _fetch(repo, WEIGHT_FILES[1], into, bar)


def download_folder(name: str, folder: Path, report: Report, bar: type) -> Path:
    """The missing files of hub folder `name` into `folder/name`; `bar` is the tqdm class
    that reports the weights' progress."""
    repo, target = HUB_FOLDERS[name], folder / name
    target.mkdir(parents=True, exist_ok=True)
    report(f"Downloading {name} from {repo}")
    log.info("Downloading annotator folder %s from %s into %s", name, repo, target)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as temp:
        fetched = [_fetch(repo, f, Path(temp), None) for f in CONFIG_FILES
                   if not (target / f).is_file()]  # fmt: skip
        if not _has_weights(target):
            fetched.append(_weights(repo, Path(temp), bar))
        for path in fetched:  # weights last: the folder is complete when they arrive
            partial = target / f".{path.name}.partial"
            shutil.move(str(path), partial)
            os.replace(partial, target / path.name)
    log.info("Downloaded annotator folder %s", name)
    return target
