"""The extra time per sampling step one ControlNet unit costs (`python -m webui.bench.controlnet`).

SD 1.5's UNet (its exact architecture, random weights) and a ControlNet made from it
(`ControlNetModel.from_unet`: the full-size SD 1.5 ControlNet), one classifier-free
guidance step (batch 2) at 256x256 by default: the UNet alone, then the ControlNet plus
the UNet with its residuals, as `core/controlnet.py` runs them; alternating, the minimum
of the rounds. Prints one README row.

This module must never import a UI library.
"""

from __future__ import annotations

import argparse
import time

import torch

from .measure import unet_inputs
from .model import SD15_UNET


def _step(unet, controlnet, inputs, hint) -> float:
    sample, t, context = inputs
    started = time.perf_counter()
    with torch.inference_mode():
        if controlnet is None:
            unet(sample, t, encoder_hidden_states=context)
        else:
            down, mid = controlnet(sample, t, encoder_hidden_states=context,
                                   controlnet_cond=hint, return_dict=False)  # fmt: skip
            unet(sample, t, encoder_hidden_states=context,
                 down_block_additional_residuals=down, mid_block_additional_residual=mid)  # fmt: skip
    return time.perf_counter() - started


def measure(size: int = 256, rounds: int = 3) -> tuple[float, float]:
    """(UNet step seconds, UNet + ControlNet step seconds): minimum of `rounds`."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    controlnet = ControlNetModel.from_unet(unet).eval()
    inputs = unet_inputs(unet, size, size)
    hint = torch.rand(2, 3, size, size)
    _step(unet, controlnet, inputs, hint)  # warm-up
    plain, guided = [], []
    for _ in range(rounds):
        plain.append(_step(unet, None, inputs, hint))
        guided.append(_step(unet, controlnet, inputs, hint))
    return min(plain), min(guided)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    plain, guided = measure(args.size, args.rounds)
    print(f"| one ControlNet unit, UNet step, CFG batch 2, {args.size}x{args.size} "
          f"(min of {args.rounds}) | {guided:.3f} s/step | UNet alone {plain:.3f} s/step "
          f"| {guided / plain:.3f} | | |")  # fmt: skip


if __name__ == "__main__":
    main()
