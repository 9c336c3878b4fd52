"""The txt2img tab: the shared generation frame plus hires. fix.

Everything a generation tab shares (prompts, sampler, size, seed, batch, scripts, output,
the job wiring) comes from `generation_tab`; this module adds the "Hires. fix" section and
turns the values into `Txt2ImgParams`.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.params import Txt2ImgParams
from .generation_tab import GenerationTab, TabSpec, build_generation_tab, common_fields
from .hires_controls import add_hires_controls, hires_params

if TYPE_CHECKING:
    from ..context import AppContext


def _params(ctx: AppContext, v: dict[str, Any]) -> Txt2ImgParams:
    return Txt2ImgParams(**common_fields(v), hires=hires_params(ctx, v))


TXT2IMG = TabSpec(prefix="txt2img", kind="txt2img", scripts_of="txt2img", params=_params,
                  extras=add_hires_controls)  # fmt: skip


def build_txt2img_tab(ctx: AppContext, checkpoint: gr.Dropdown) -> GenerationTab:
    return build_generation_tab(ctx, checkpoint, TXT2IMG)
