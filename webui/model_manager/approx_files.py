"""Where the small preview and draft decoders live: A1111's Approx NN and TAESD files.

A1111 and ComfyUI users keep them as:
- `models/VAE-approx/model.pt` (SD 1/2) and `vaeapprox-sdxl.pt` (SDXL): A1111's
  "Approx NN" (`webui.model_manager.vae_approx.VAEApprox`);
- madebyollin's TAESD files, decoder and encoder apart: `taesd_decoder.pth` (SD 1/2),
  `taesdxl_decoder.pth` (SDXL), `taesd3_decoder.pth` (SD 3), `taef1_decoder.pth` (FLUX),
  and `*_encoder.*`, as `.safetensors` or `.pth`. A1111 1.6+ downloads them into
  `models/VAE-taesd`, ComfyUI keeps them in `models/vae_approx`; here `models/VAE-approx`
  is the folder to use and `models/VAE-taesd` is read too.

A family names the files it uses (`Family.vae_approx`, `Family.taesd`); this module finds
them by stem and says where a missing one goes. It never loads a file, never imports
torch (the generation service checks a request with it) nor a UI library.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

APPROX_FOLDER = "VAE-approx"  # the folder to put them in (A1111's Approx NN folder)
TAESD_FOLDER = "VAE-taesd"  # where A1111 1.6+ keeps its TAESD downloads: read as well
SUFFIXES = (".safetensors", ".pth", ".pt")


def approx_folders(models_dir: Path) -> tuple[Path, ...]:
    """The folders searched, in order: `models/VAE-approx`, then `models/VAE-taesd`."""
    return (Path(models_dir) / APPROX_FOLDER, Path(models_dir) / TAESD_FOLDER)


def taesd_stem(prefix: str, part: str) -> str:
    """`taesdxl` + `decoder` -> `taesdxl_decoder` (madebyollin's file names)."""
    return f"{prefix}_{part}"


def find_file(folders: Sequence[Path], stem: str) -> Path | None:
    """The first `<stem><suffix>` in the folders (safetensors before pickles), else None."""
    for folder in folders:
        for suffix in SUFFIXES:
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def missing_message(what: str, stem: str, folders: Sequence[Path]) -> str:
    """What to put where, e.g. 'TAESD: put taesd_decoder.safetensors (or .pth) in ...'."""
    suffix = ".pt" if stem in ("model", "vaeapprox-sdxl") else ".safetensors (or .pth)"
    return f"{what}: put {stem}{suffix} in {folders[0]}"


def any_taesd_file(folders: Sequence[Path], part: str) -> bool:
    """Whether any TAESD file of this part (`*_decoder.*`, `*_encoder.*`) is in the folders."""
    for folder in folders:
        if folder.is_dir() and any(
            p.is_file() and p.suffix in SUFFIXES and p.stem.endswith(f"_{part}")
            for p in folder.iterdir()
        ):
            return True
    return False
