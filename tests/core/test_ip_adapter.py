"""IP-Adapter tokens per UNet call (webui/core/ip_adapter.py): which rows are
unconditional under the prompt hooks' layouts, and the per-step scales."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from webui.core.controlnet_units import ControlUnit
from webui.core.ip_adapter import IpUnit, tokens_for_call, uncond_rows


@pytest.mark.parametrize(("rows", "batch", "conds", "expected"), [
    (2, 1, 1, 1),  # CFG: [uncond, cond]
    (1, 1, 1, 0),  # CFG 1
    (4, 2, 1, 2),  # a batch of 2
    (3, 1, 2, 1),  # AND: [uncond, cond 1, cond 2]
    (2, 1, 2, 0),  # AND with NGMS skipping the uncond rows
    (6, 2, 2, 2),  # AND, a batch of 2
])  # fmt: skip
def test_the_unconditional_rows(rows, batch, conds, expected):
    assert uncond_rows(rows, batch, conds) == expected


def test_tokens_and_scales_for_a_call():
    unit = ControlUnit(enabled=True, weight=0.7, guidance_start=0.2, guidance_end=0.6)
    ip = IpUnit(unit, None, cond=torch.ones(1, 4, 8), uncond=torch.zeros(1, 4, 8))
    proc = SimpleNamespace(scale=[1.0])
    like = torch.zeros(1, dtype=torch.float16)
    (tokens,) = tokens_for_call([ip], [proc], rows=3, uncond_rows=1, fraction=0.4, like=like)
    assert tokens.shape == (3, 4, 8) and tokens.dtype == torch.float16
    assert tokens[0].sum() == 0 and bool((tokens[1:] == 1).all())
    assert proc.scale == [0.7]
    tokens_for_call([ip], [proc], rows=3, uncond_rows=1, fraction=0.8, like=like)
    assert proc.scale == [0.0]  # after the unit's ending step


def test_a_unet_the_adapter_does_not_fit_runs_without_it():
    """A hires. fix checkpoint of another width (SD 1.x adapter, SD 2.x UNet): the
    processors stay the UNet's own and the call gets no image tokens."""
    from webui.core.ip_adapter import installed

    changed = []
    unet = SimpleNamespace(config=SimpleNamespace(cross_attention_dim=1024),
                           attn_processors={"a.attn2.processor": "own"},
                           set_attn_processor=changed.append)  # fmt: skip
    model = SimpleNamespace(names=["a.attn2.processor"],
                            processors=[SimpleNamespace(cross_attention_dim=768)])  # fmt: skip
    ip = IpUnit(ControlUnit(enabled=True), model, torch.ones(1, 4, 8), torch.zeros(1, 4, 8))
    with installed(unet, [ip]) as processors:
        assert processors == []
    assert changed == []
