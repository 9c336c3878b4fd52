"""Soft injection as sd-webui-controlnet weighs residuals (webui/core/controlnet.py):
T2I-Adapter features by (0.25, 0.62, 0.825, 1.0) x weight in "My prompt is more important"
and "ControlNet is more important", and canny and mlsd units (ControlNet or T2I-Adapter)
forced soft in the hires. fix pass only."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from webui.core.controlnet import JobControl, PreparedUnit, _ControlState
from webui.core.controlnet_units import ControlUnit
from webui.model_manager.tiny_adapters import build_tiny_t2i_adapter

SIZE = (64, 64)  # the first pass; 128 x 128: the hires. fix pass
SOFT_T2I = (0.25, 0.62, 0.825, 1.0)


def _adapter_part(unit: ControlUnit, side: int) -> PreparedUnit:
    model = build_tiny_t2i_adapter("sd1")
    part = PreparedUnit(unit, 0, np.zeros((64, 64, 3), np.uint8), "Just Resize", model)
    part.features[(side, side)] = [torch.ones(1, 2, 2, 2) for _ in range(4)]  # 4 levels
    return part


def _state(part: PreparedUnit, vae_scale: int = 8) -> _ControlState:
    pipe = SimpleNamespace(num_timesteps=4, vae_scale_factor=vae_scale)
    return _ControlState(JobControl([part], SIZE), pipe, batch_size=1, first_step=0)


@pytest.mark.parametrize(("mode", "module", "side", "soft"), [
    ("Balanced", "canny", 64, False),
    ("My prompt is more important", "canny", 64, True),
    ("ControlNet is more important", "canny", 64, True),
    ("Balanced", "canny", 128, True),  # hires. fix: forced
    ("Balanced", "mlsd", 128, True),
    ("Balanced", "lineart", 128, False),
])  # fmt: skip
def test_t2i_adapter_soft_weights(mode, module, side, soft):
    unit = ControlUnit(enabled=True, module=module, weight=0.8, control_mode=mode)
    sample = torch.zeros(2, 4, side // 8, side // 8)  # [uncond, cond]
    features = _state(_adapter_part(unit, side)).adapter_residuals(sample)
    scales = [0.8 * s for s in SOFT_T2I] if soft else [0.8] * 4
    for feature, scale in zip(features, scales, strict=True):
        assert torch.allclose(feature[1], torch.full_like(feature[1], scale))
        uncond = 0.0 if mode == "ControlNet is more important" else scale
        assert torch.allclose(feature[0], torch.full_like(feature[0], uncond))


class _OnesControlNet:
    """A ControlNet whose 12 down residuals and mid residual are ones."""

    config = SimpleNamespace(in_channels=4)
    dtype = torch.float32

    def __call__(self, x, timestep, **kwargs):
        ones = torch.ones(x.shape[0], 1, 1, 1)
        return [ones] * 12, ones


@pytest.mark.parametrize(("module", "side", "soft"), [
    ("canny", 64, False), ("mlsd", 64, False), ("canny", 128, True), ("mlsd", 128, True),
    ("depth", 128, False),
])  # fmt: skip
def test_controlnet_units_forced_soft_in_the_hires_pass(module, side, soft):
    unit = ControlUnit(enabled=True, module=module, weight=0.5)
    part = PreparedUnit(unit, 0, np.zeros((64, 64, 3), np.uint8), "Just Resize", _OnesControlNet())
    sample = torch.zeros(2, 4, side // 8, side // 8)
    down, mid = _state(part).residuals(sample, torch.tensor(1), torch.zeros(2, 3, 8), None)
    got = [float(r[0].flatten()[0]) for r in [*down, mid]]
    expected = [0.5 * 0.825 ** (12 - i) if soft else 0.5 for i in range(13)]
    assert got == pytest.approx(expected)


def test_the_hires_pass_is_told_by_the_latents_of_the_vae():
    """A VAE of 2 pixels per latent (the tiny test models'): 32 x 32 latents are the 64 x 64
    first pass, 64 x 64 latents the hires. fix pass."""
    unit = ControlUnit(enabled=True, module="canny", weight=1.0)
    first = _state(_adapter_part(unit, 256), vae_scale=2)  # hints at 8 pixels per latent
    (feature, *_) = first.adapter_residuals(torch.zeros(2, 4, 32, 32))
    assert torch.allclose(feature, torch.ones_like(feature))
    second = _state(_adapter_part(unit, 512), vae_scale=2)
    (feature, *_) = second.adapter_residuals(torch.zeros(2, 4, 64, 64))
    assert torch.allclose(feature, torch.full_like(feature, 0.25))
