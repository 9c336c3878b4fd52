"""Which face restorers exist: GFPGAN and CodeFormer model files, and facexlib's weights.

A1111's layout: `models/GFPGAN` holds a GFPGAN model (`GFPGANv1.4.pth`, or another file
whose name contains "GFPGAN") and the weights of the face detector and face parser that
both restorers use (`detection_Resnet50_Final.pth`, `parsing_parsenet.pth`);
`models/Codeformer` holds `codeformer-v0.1.0.pth`. The folders can be moved with
`--gfpgan-models-path` and `--codeformer-models-path`. A job carries a `FaceRestorerRef`
(the restorer's name, its files and the CodeFormer weight), resolved here when the request
is made; a missing file is a `MissingFaceModelError` naming the file and the folder.
Nothing is ever downloaded.

This module only lists files: it must never import torch or load weights (the UI and the
API import it). Running restorers is `webui.imaging.face_restoration`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

CODEFORMER, GFPGAN = "CodeFormer", "GFPGAN"
RESTORERS = (CODEFORMER, GFPGAN)  # A1111's order in the face_restoration_model option
DETECTION_FILE = "detection_Resnet50_Final.pth"  # facexlib's RetinaFace (ResNet-50)
PARSING_FILE = "parsing_parsenet.pth"  # facexlib's ParseNet
DEFAULT_FILES = {GFPGAN: "GFPGANv1.4.pth", CODEFORMER: "codeformer-v0.1.0.pth"}
MODEL_SUFFIXES = (".pth", ".safetensors")


class MissingFaceModelError(FileNotFoundError, UserError):
    """A face restorer's model file (or a detector/parser weight file) is not there."""


class UnknownFaceRestorerError(LookupError, UserError):
    """A request names a face restorer that does not exist."""


@dataclass(frozen=True)
class FaceRestorerRef:
    """What a job needs to restore faces: the restorer, its files and CodeFormer's weight."""

    name: str  # CODEFORMER or GFPGAN
    path: str  # the restorer's model file
    detection: str  # facexlib's face detector weights
    parsing: str  # facexlib's face parser weights
    weight: float = 0.5  # CodeFormer: 0 = strongest effect, 1 = weakest; GFPGAN: unused


@dataclass(frozen=True)
class FaceRestorerFolders:
    """The folders of the face restorer files (A1111: models/GFPGAN, models/Codeformer)."""

    gfpgan: Path
    codeformer: Path

    @classmethod
    def under(cls, models_dir: Path) -> FaceRestorerFolders:
        return cls(Path(models_dir) / "GFPGAN", Path(models_dir) / "Codeformer")

    def folder(self, name: str) -> Path:
        return self.gfpgan if name == GFPGAN else self.codeformer

    def model_file(self, name: str) -> Path | None:
        """The restorer's model file: the default name if it is there, else the first
        file (by name) that fits (A1111: a GFPGAN file has "GFPGAN" in its name)."""
        folder = self.folder(name)
        default = folder / DEFAULT_FILES[name]
        if default.is_file():
            return default
        if not folder.is_dir():
            return None
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix.lower() not in MODEL_SUFFIXES:
                continue
            if path.name in (DETECTION_FILE, PARSING_FILE):
                continue
            if name == GFPGAN and "gfpgan" not in path.name.lower():
                continue
            return path
        return None

    def resolve(self, name: object, weight: float = 0.5, *, field: str) -> FaceRestorerRef:
        """The `FaceRestorerRef` of a restorer name (case-insensitive). Raises
        UnknownFaceRestorerError or MissingFaceModelError, their messages starting with
        `field`."""
        wanted = next((n for n in RESTORERS if str(name).strip().lower() == n.lower()), None)
        if wanted is None:
            raise UnknownFaceRestorerError(
                f"{field}: no face restorer named {name!r}; known: {', '.join(RESTORERS)}"
            )
        model = self.model_file(wanted)
        if model is None:
            raise MissingFaceModelError(
                f"{field}: {wanted} needs its model file {DEFAULT_FILES[wanted]} in "
                f"{self.folder(wanted)} (not found)"
            )
        helper = [self.gfpgan / DETECTION_FILE, self.gfpgan / PARSING_FILE]
        missing = [path.name for path in helper if not path.is_file()]
        if missing:
            raise MissingFaceModelError(
                f"{field}: face restoration needs the face detector and parser weights "
                f"{' and '.join(missing)} in {self.gfpgan} (not found)"
            )
        return FaceRestorerRef(wanted, str(model), str(helper[0]), str(helper[1]), float(weight))

    def available(self) -> list[tuple[str, Path]]:
        """(name, folder) of every restorer, as GET /sdapi/v1/face-restorers lists them."""
        return [(name, self.folder(name)) for name in RESTORERS]
