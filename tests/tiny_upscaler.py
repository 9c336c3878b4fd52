"""A tiny random-weight ESRGAN (RRDBNet) written as users have them, for upscaler tests.

The state dict has the BasicSR / Real-ESRGAN key layout (`conv_first`, `body.N.rdbM.convK`,
`conv_body`, `conv_up1/2`, `conv_hr`, `conv_last`), which spandrel identifies as ESRGAN and
whose scale it reads from the number of up-convolutions. One RRDB block of 16 features
keeps it fast; the fixed seed keeps it deterministic.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

GROWTH = 32  # RRDB growth channels (spandrel's RRDBNet uses 32)


def tiny_esrgan_state_dict(scale: int = 4, features: int = 16, blocks: int = 1, seed: int = 0):
    if scale not in (1, 2, 4):
        raise ValueError("scale must be 1, 2 or 4")
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name: str, out_ch: int, in_ch: int, gain: float = 1.0) -> None:
        std = gain * math.sqrt(2.0 / (in_ch * 9))
        state[f"{name}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=generator) * std
        state[f"{name}.bias"] = torch.randn(out_ch, generator=generator) * 0.01

    conv("conv_first", features, 3)
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                out_ch = GROWTH if c < 5 else features
                conv(f"body.{b}.rdb{r}.conv{c}", out_ch, features + (c - 1) * GROWTH, 0.2)
    conv("conv_body", features, features, 0.2)
    for i in range(int(math.log2(scale))):
        conv(f"conv_up{i + 1}", features, features)
    conv("conv_hr", features, features)
    conv("conv_last", 3, features, 0.5)
    state["conv_last.bias"] += 0.5  # centre the output in [0, 1]
    return state


def write_tiny_esrgan(path: Path, scale: int = 4, seed: int = 0) -> Path:
    """Write the model as .pth (Real-ESRGAN's {"params_ema": ...}) or .safetensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = tiny_esrgan_state_dict(scale=scale, seed=seed)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"params_ema": state}, path)
    return path
