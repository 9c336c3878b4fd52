"""Which upscalers exist: built-in ones, hires. fix latent modes, and model files on disk.

A1111 names: "None", "Lanczos", "Nearest", the latent modes ("Latent", "Latent
(antialiased)", ...; hires. fix only), and every model file in `models/ESRGAN`,
`models/RealESRGAN`, `models/SwinIR` and `models/DAT` under its file stem, so that API
clients can name them. A job carries an `UpscalerRef` (name and, for a model, its file),
resolved here when the request is made; the worker never looks names up.

This module only lists files: it must never import torch or load weights (the UI and the
API import it). Running upscalers is `webui.imaging.upscalers`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

NONE, LANCZOS, NEAREST = "None", "Lanczos", "Nearest"
BUILTIN = (NONE, LANCZOS, NEAREST)
#: hires. fix upscalers that work on latents: name -> (torch interpolate mode, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
#: model folders under models/, in the order their files are listed
MODEL_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT")
MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
_SCALE_RE = re.compile(r"(?:^|[^0-9])([1-8])x|x([1-8])(?:[^0-9]|$)", re.IGNORECASE)


class UnknownUpscalerError(LookupError, UserError):
    """A request names an upscaler that does not exist."""


@dataclass(frozen=True)
class UpscalerRef:
    """What a job needs to run an upscaler: its name and, for a model, the file."""

    name: str
    path: str | None = None

    @property
    def is_model(self) -> bool:
        return self.path is not None

    @property
    def is_latent(self) -> bool:
        return self.name in LATENT_MODES


@dataclass(frozen=True)
class UpscalerFile:
    name: str  # file stem, A1111's upscaler name
    path: Path
    folder: str  # ESRGAN, RealESRGAN, SwinIR or DAT

    @property
    def scale_guess(self) -> int | None:
        """The scale written in the file name ("4x-UltraSharp", "x2"), else None."""
        match = _SCALE_RE.search(self.name)
        if not match:
            return None
        return int(match.group(1) or match.group(2))


class UpscalerCatalog:
    """The upscalers under one models folder (None: built-in ones only); scanning is
    cheap and done on each call, so new files show up without a restart."""

    def __init__(self, models_dir: Path | None):
        self.models_dir = Path(models_dir) if models_dir is not None else None

    def folders(self) -> list[Path]:
        if self.models_dir is None:
            return []
        return [self.models_dir / name for name in MODEL_FOLDERS]

    def model_files(self) -> list[UpscalerFile]:
        """Model files of every folder, sorted by name within a folder; first stem wins."""
        found: dict[str, UpscalerFile] = {}
        for folder in self.folders():
            folder_name = folder.name
            if not folder.is_dir():
                continue
            paths = sorted(
                p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES
            )
            for path in paths:
                name = path.stem
                if name in found or name in BUILTIN or name in LATENT_MODES:
                    log.warning("upscaler %s: the name %r is taken; file ignored", path, name)
                    continue
                found[name] = UpscalerFile(name, path, folder_name)
        return list(found.values())

    def names(self, *, latent: bool = False, none: bool = True) -> list[str]:
        """Upscaler names for a dropdown: [None,] Lanczos, Nearest, models [, latent modes]."""
        builtin = [n for n in BUILTIN if none or n != NONE]
        models = [f.name for f in self.model_files()]
        return (list(LATENT_MODES) if latent else []) + builtin + models

    def resolve(self, name: str | None, *, latent: bool = False, field: str = "upscaler"):
        """The `UpscalerRef` for a name (case-insensitive); UnknownUpscalerError if none."""
        if name is None or not str(name).strip():
            return UpscalerRef(NONE)
        wanted = str(name).strip()
        for builtin in (*BUILTIN, *(LATENT_MODES if latent else ())):
            if wanted.lower() == builtin.lower():
                return UpscalerRef(builtin)
        files = self.model_files()
        for item in files:
            if item.name == wanted or item.name.lower() == wanted.lower():
                return UpscalerRef(item.name, str(item.path))
        if not latent and wanted in LATENT_MODES:
            raise UnknownUpscalerError(f"{field}: {wanted} works only in hires. fix")
        known = ", ".join(self.names(latent=latent))
        raise UnknownUpscalerError(f"{field}: no upscaler named {wanted!r}; known: {known}")
