"""The txt2img tab: the shared generation frame plus hires. fix.

Everything a generation tab shares (prompts, sampler, size, seed, batch, scripts, output,
the job wiring) comes from `generation_tab`; this module adds the "Hires. fix" section
(with its checkpoint) and the "Refiner" (`refiner_controls`), and turns the values into
`Txt2ImgParams`.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.params import Txt2ImgParams
from .generation_tab import GenerationTab, TabSpec, build_generation_tab, common_fields
from .hires_controls import add_hires_controls, hires_params
from .image_common import Named
from .refiner_controls import add_refiner_controls, refiner_fields

if TYPE_CHECKING:
    from ..context import AppContext


def _params(ctx: AppContext, v: dict[str, Any]) -> Txt2ImgParams:
    return Txt2ImgParams(**common_fields(v), hires=hires_params(ctx, v), **refiner_fields(v))


def _extras(ctx: AppContext, named: Named) -> None:
    """Hires. fix and the Refiner."""
    add_hires_controls(ctx, named)
    add_refiner_controls(ctx, named, "txt2img")


TXT2IMG = TabSpec(prefix="txt2img", kind="txt2img", scripts_of="txt2img", params=_params,
                  extras=_extras)  # fmt: skip


def build_txt2img_tab(ctx: AppContext, checkpoint: gr.Dropdown) -> GenerationTab:
    return build_generation_tab(ctx, checkpoint, TXT2IMG)
