"""The one upscaler catalog of the running program, for the UI and the API alike.

Built once by the composition root over the models folder (`AppContext.upscalers`).
Names are A1111's (`webui.imaging.upscaler_list`); a request may also name an upscaler by
its index in `names()`, as A1111's scripts send it. Files are scanned on each call, so a
model dropped into models/ESRGAN shows up without a restart.

This module must never import torch or load weights.
"""

from __future__ import annotations

from pathlib import Path

from ..imaging.upscaler_list import (
    LATENT_MODES,
    UnknownUpscalerError,
    UpscalerCatalog,
    UpscalerFile,
    UpscalerRef,
)

__all__ = ["LATENT_MODES", "UnknownUpscalerError", "UpscalerRef", "Upscalers"]


class Upscalers:
    """Upscaler names and their resolution into the `UpscalerRef` a job carries."""

    def __init__(self, models_dir: Path | None):
        self._catalog = UpscalerCatalog(models_dir)

    @property
    def models_dir(self) -> Path | None:
        return self._catalog.models_dir

    def names(self, *, latent: bool = False, none: bool = True) -> list[str]:
        """For a dropdown: [latent modes,] [None,] Lanczos, Nearest, the model files."""
        return self._catalog.names(latent=latent, none=none)

    def model_files(self) -> list[UpscalerFile]:
        """The upscaler model files (models/ESRGAN, RealESRGAN, SwinIR, DAT)."""
        return self._catalog.model_files()

    def resolve(
        self, name: str | int | None, *, latent: bool = False, field: str = "upscaler"
    ) -> UpscalerRef:
        """The upscaler a name (case-insensitive) or an index into `names()` means.

        None or "" is "None". `latent` admits the hires. fix latent modes (and counts them
        in the index, as A1111's hires list does). Raises UnknownUpscalerError (a
        LookupError whose message starts with `field`)."""
        if isinstance(name, bool) or (name is not None and not isinstance(name, str | int)):
            raise UnknownUpscalerError(f"{field}: expected an upscaler name, got {name!r}")
        if isinstance(name, int):
            names = self.names(latent=latent)
            if not 0 <= name < len(names):
                raise UnknownUpscalerError(
                    f"{field}: upscaler index {name} is out of range 0..{len(names) - 1}"
                )
            name = names[name]
        return self._catalog.resolve(name, latent=latent, field=field)
