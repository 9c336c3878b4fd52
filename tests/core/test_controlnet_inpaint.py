"""inpaint_only's keep of the unmasked area (webui/core/controlnet_inpaint.py): the kept
prediction denoises to the hint's latents outside the mask and to the model's own inside
(epsilon and v prediction, by the unit's weight); the decoded image gets the hint's
pixels back outside the dilated, blurred mask."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from webui.core.controlnet_inpaint import kept_pixels, kept_prediction


def _part(weight: float, origin: torch.Tensor, mask: torch.Tensor, hint=None):
    unit = SimpleNamespace(weight=weight)
    return SimpleNamespace(unit=unit, keep=True, origin={(16, 24): (origin, mask)},
                           hint=lambda h, w: hint)  # fmt: skip


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_the_kept_prediction_denoises_to_the_hint_outside_the_mask(kind, weight):
    torch.manual_seed(0)
    alphas = torch.linspace(0.999, 0.01, 1000)
    scheduler = SimpleNamespace(alphas_cumprod=alphas, config={"prediction_type": kind})
    pipe = SimpleNamespace(scheduler=scheduler, vae_scale_factor=8)
    sample, pred, origin = torch.randn(3, 2, 4, 2, 3).unbind(0)  # 2 rows, 4 channels, 2x3
    mask = torch.tensor([[[[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]]])  # 1 = generate
    new = kept_prediction([_part(weight, origin[:1], mask)], pipe, sample, 500, pred)
    a, b = alphas[500].sqrt(), (1 - alphas[500]).sqrt()

    def x0(p: torch.Tensor) -> torch.Tensor:
        return a * sample - b * p if kind == "v_prediction" else (sample - b * p) / a

    wanted = x0(pred) * mask + origin[:1] * (1 - mask)
    assert torch.allclose(x0(new), weight * wanted + (1 - weight) * x0(pred), atol=1e-4)


def test_kept_pixels_paste_the_hint_outside_the_blurred_mask():
    rng = np.random.default_rng(1)
    hint = rng.integers(0, 255, (16, 24, 4), np.uint8)
    hint[:, :, 3] = 0
    hint[:, 16:, 3] = 255  # repaint the right third
    image = Image.fromarray(rng.integers(0, 255, (16, 24, 3), np.uint8))
    control = SimpleNamespace(controlnets=[_part(1.0, None, None, hint)])
    out = np.asarray(kept_pixels(control, image))
    assert np.array_equal(out[:, :10], hint[:, :10, :3])  # 3 px dilation + 7 px blur away
    assert np.array_equal(out[:, 20:], np.asarray(image)[:, 20:])  # generated
    off = SimpleNamespace(controlnets=[_part(0.0, None, None, hint)])
    assert kept_pixels(off, image) is image  # weight 0 equals no unit
