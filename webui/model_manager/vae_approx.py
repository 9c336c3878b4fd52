"""The small decoders: A1111's "Approx NN" net and TAESD, loaded from the users' files.

- `VAEApprox`: A1111's 8-layer convolutional net (`models/VAE-approx/model.pt`,
  `vaeapprox-sdxl.pt`): scaled latents in, RGB in [-1, 1] at 8x the size (a preview).
- TAESD (madebyollin's tiny autoencoder) as diffusers' `AutoencoderTiny`. Users have the
  decoder and the encoder in separate files whose keys are the indices of madebyollin's
  `nn.Sequential` (`1.weight`, `3.conv.0.weight`, ...; the decoder's index 0 is its
  latent clamp, which diffusers' `DecoderTiny` does in `forward`, so its layer N is the
  file's N+1; the encoder's indices are diffusers' own). A diffusers `AutoencoderTiny`
  file (`decoder.layers.*`, `encoder.layers.*`) loads too. The latent channels (4, or 16
  for SD 3 and FLUX) and the width (64) come from the tensors. TAESD takes the latents as
  the denoiser sees them (scaled) and returns RGB in [-1, 1].

`ApproxModels` (the worker's, one per process) finds the files (`approx_files`), loads
pickles through torch's restricted unpickler (`network_files.load_tensors`), keeps the
few it loaded, and remembers which missing-file warnings it already logged.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .approx_files import find_file, missing_message, taesd_stem
from .network_files import NetworkFileError, load_tensors

log = logging.getLogger(__name__)

KEEP_LOADED = 4  # decoders kept in memory (each is a few MB)


class ApproxFileMissing(FileNotFoundError, UserError):
    """A preview or draft decoder's file is not there; the message says what goes where."""


class VAEApprox(nn.Module):
    """A1111's Approx NN: latents upscaled 2x, padded, then eight valid convolutions."""

    CHANNELS = (4, 8, 16, 32, 64, 32, 16, 8, 3)
    KERNELS = (7, 5, 3, 3, 3, 3, 3, 3)
    PAD = 11  # what the valid convolutions take away from each side

    def __init__(self) -> None:
        super().__init__()
        for i, kernel in enumerate(self.KERNELS):
            conv = nn.Conv2d(self.CHANNELS[i], self.CHANNELS[i + 1], (kernel, kernel))
            self.add_module(f"conv{i + 1}", conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, (x.shape[2] * 2, x.shape[3] * 2))
        x = nn.functional.pad(x, (self.PAD,) * 4)
        for i in range(len(self.KERNELS)):
            x = nn.functional.leaky_relu(getattr(self, f"conv{i + 1}")(x), 0.1)
        return x


def taesd_layers(state: dict, part: str, filename: str) -> dict:
    """A TAESD decoder's or encoder's tensors as `AutoencoderTiny.<part>` keys (`layers.N.*`)."""
    own = f"{part}."
    if any(k.startswith(own + "layers.") for k in state):  # a diffusers AutoencoderTiny
        return {k[len(own) :]: v for k, v in state.items() if k.startswith(own)}
    for prefix in (f"taesd_{part}.", own):  # ComfyUI's and a prefixed export
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    shift = 1 if part == "decoder" else 0  # madebyollin's decoder starts with its clamp
    out = {}
    for key, value in state.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or not isinstance(value, torch.Tensor):
            raise NetworkFileError(f"{filename}: not a TAESD {part} file (key {key!r})")
        out[f"layers.{int(index) - shift}.{rest}"] = value
    return out


def build_taesd(decoder: dict, encoder: dict | None = None, filename: str = "TAESD"):
    """An `AutoencoderTiny` with these `layers.*` tensors (`taesd_layers`); without an
    encoder's, the encoder keeps its initial weights (previews and decodes need none)."""
    from diffusers import AutoencoderTiny

    try:
        width, channels = (int(n) for n in decoder["layers.0.weight"].shape[:2])
        enc_width = int(encoder["layers.0.weight"].shape[0]) if encoder is not None else width
        model = AutoencoderTiny(latent_channels=channels, decoder_block_out_channels=(width,) * 4,
                                encoder_block_out_channels=(enc_width,) * 4)  # fmt: skip
        model.decoder.load_state_dict(decoder)
        if encoder is not None:
            model.encoder.load_state_dict(encoder)
    except (KeyError, RuntimeError, IndexError) as exc:
        raise NetworkFileError(f"{filename}: does not fit TAESD ({exc})") from None
    return model.eval().requires_grad_(False)


def load_vae_approx(path: Path, *, allow_unsafe_pickle: bool = False) -> VAEApprox:
    """A1111's Approx NN from its `.pt` (or `.safetensors`) state dict."""
    state = load_tensors(path, allow_unsafe_pickle=allow_unsafe_pickle)
    model = VAEApprox()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise NetworkFileError(f"{path.name}: not an Approx NN (VAEApprox) file ({exc})") from None
    return model.eval().requires_grad_(False)


class ApproxModels:
    """The Approx NN and TAESD files in `folders`, loaded on first use and kept (the last
    `KEEP_LOADED`). Only the worker thread uses it."""

    def __init__(self, folders: Sequence[Path], *, allow_unsafe_pickle: bool = False):
        self.folders = tuple(Path(f) for f in folders)
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self._loaded: OrderedDict[tuple, nn.Module] = OrderedDict()
        self._warned: set[str] = set()

    def path(self, what: str, stem: str) -> Path:
        """The file of `stem`; ApproxFileMissing says what to put where."""
        found = find_file(self.folders, stem)
        if found is None:
            raise ApproxFileMissing(missing_message(what, stem, self.folders))
        return found

    def approx_nn(self, stem: str, device: torch.device, dtype: torch.dtype) -> VAEApprox:
        """A1111's Approx NN of a family (`stem`: "model", "vaeapprox-sdxl")."""
        path = self.path("Approx NN", stem)
        load = lambda: load_vae_approx(path, allow_unsafe_pickle=self.allow_unsafe_pickle)  # noqa: E731
        return self._cached((path, device, dtype), load, device, dtype)  # type: ignore[return-value]

    def taesd(self, prefix: str, device: torch.device, dtype: torch.dtype, *, encoder=False):
        """The `AutoencoderTiny` of a family's TAESD files (`prefix`: "taesd", "taesdxl");
        its encoder file only when `encoder` (for a TAESD encode)."""
        dec = self.path("TAESD", taesd_stem(prefix, "decoder"))
        enc = self.path("TAESD", taesd_stem(prefix, "encoder")) if encoder else None

        def load():
            read = lambda p, part: taesd_layers(  # noqa: E731
                load_tensors(p, allow_unsafe_pickle=self.allow_unsafe_pickle), part, p.name
            )
            enc_state = read(enc, "encoder") if enc is not None else None
            return build_taesd(read(dec, "decoder"), enc_state, dec.name)

        return self._cached((dec, enc, device, dtype), load, device, dtype)

    def first_warning(self, message: str) -> bool:
        """True the first time this process sees `message` (log it then, not every step)."""
        if message in self._warned:
            return False
        self._warned.add(message)
        return True

    def clear(self) -> None:
        self._loaded.clear()

    def _cached(self, key: tuple, load, device, dtype) -> nn.Module:
        stamp = tuple(p.stat().st_mtime_ns for p in key if isinstance(p, Path))
        key = (*key, stamp)
        model = self._loaded.get(key)
        if model is None:
            model = nn.Module.to(load(), device, dtype)  # diffusers' `to` warns for nothing
            log.info("loaded %s", ", ".join(p.name for p in key if isinstance(p, Path)))
            self._loaded[key] = model
            while len(self._loaded) > KEEP_LOADED:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return model
