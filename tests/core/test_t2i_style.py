"""The T2I style adapter's tokens in a UNet call (webui/core/t2i_style.py): appended to
the conditional rows' context times the weight, zeros on the unconditional rows, only
between the unit's start and end, and not on a UNet of another width."""

from __future__ import annotations

import torch

from webui.core.controlnet_units import ControlUnit
from webui.core.t2i_style import StyleUnit, with_style


def _style(**fields) -> StyleUnit:
    unit = ControlUnit(enabled=True, module="clip_vision", **fields)
    return StyleUnit(unit, torch.arange(1.0, 9.0).reshape(1, 2, 4))  # 2 tokens of width 4


def test_tokens_on_the_conditional_rows():
    context = torch.full((3, 5, 4), 7.0, dtype=torch.float16)  # [uncond, cond 1, cond 2]
    out = with_style(context, [_style(weight=0.5)], uncond_rows=1, fraction=0.3)
    assert out.shape == (3, 7, 4) and out.dtype == torch.float16
    assert torch.equal(out[:, :5], context)
    assert not out[0, 5:].any()
    expected = (torch.arange(1.0, 9.0).reshape(2, 4) * 0.5).half()
    assert torch.equal(out[1, 5:], expected) and torch.equal(out[2, 5:], expected)
    two = with_style(context, [_style(), _style(weight=2.0)], uncond_rows=1, fraction=0.3)
    assert two.shape == (3, 9, 4) and torch.equal(two[1, 7:], expected * 4)


def test_only_between_start_and_end():
    context = torch.zeros(2, 5, 4)
    unit = _style(guidance_start=0.2, guidance_end=0.5)
    assert with_style(context, [unit], 1, 0.1) is context
    assert with_style(context, [unit], 1, 0.5).shape == (2, 7, 4)
    assert with_style(context, [unit], 1, 0.6) is context


def test_a_context_of_another_width_runs_without_it():
    context = torch.zeros(2, 5, 8)  # a hires. fix checkpoint of another family
    unit = _style()
    assert with_style(context, [unit], 1, 0.0) is context and unit.warned
