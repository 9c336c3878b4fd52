"""Tiny preview decoders in the files users have: madebyollin's TAESD decoder/encoder
files (the keys of his `nn.Sequential`) and A1111's Approx NN `model.pt`.

The TAESD model is diffusers' `AutoencoderTiny` with 8 channels instead of 64 (the loader
reads the width from the tensors), so building and running it takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

from webui.model_manager.vae_approx import VAEApprox

WIDTH = 8  # channels of the tiny TAESD (the real files: 64)


def tiny_taesd(seed: int = 0, latent_channels: int = 4) -> AutoencoderTiny:
    torch.manual_seed(seed)
    channels = (WIDTH,) * 4
    model = AutoencoderTiny(encoder_block_out_channels=channels, latent_channels=latent_channels,
                            decoder_block_out_channels=channels)  # fmt: skip
    with torch.no_grad():  # initial weights decode to near-grey: make the pictures vary
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def madebyollin_state(model: AutoencoderTiny, part: str) -> dict[str, torch.Tensor]:
    """The decoder's or encoder's tensors as madebyollin's files hold them: the index in
    his `nn.Sequential` (the decoder's 0 is its clamp, so diffusers' layer N is N+1)."""
    shift = 1 if part == "decoder" else 0
    state = getattr(model, part).state_dict()
    out = {}
    for key, value in state.items():
        _, index, rest = key.split(".", 2)  # layers.N.rest
        out[f"{int(index) + shift}.{rest}"] = value.clone().contiguous()
    return out


def save_taesd_files(folder: Path, prefix: str = "taesd", seed: int = 0,
                     decoder_suffix: str = ".safetensors") -> AutoencoderTiny:  # fmt: skip
    """`<prefix>_decoder<suffix>` and `<prefix>_encoder.pth` in `folder`; returns the model."""
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_taesd(seed)
    decoder = madebyollin_state(model, "decoder")
    if decoder_suffix == ".safetensors":
        save_file(decoder, str(folder / f"{prefix}_decoder.safetensors"))
    else:
        torch.save(decoder, folder / f"{prefix}_decoder{decoder_suffix}")
    torch.save(madebyollin_state(model, "encoder"), folder / f"{prefix}_encoder.pth")
    return model


def save_vae_approx(folder: Path, name: str = "model.pt", seed: int = 0) -> VAEApprox:
    """A1111's Approx NN weights file (a pickled state dict)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = VAEApprox().eval()
    torch.save(model.state_dict(), folder / name)
    return model
