"""Choosing a Z-Image checkpoint sets Z-Image Turbo's defaults in the generation tabs
(9 steps, CFG Scale 1, Euler, Simple), as choosing FLUX.1 dev sets Forge's FLUX preset."""

from __future__ import annotations

import shutil

import gradio as gr

from webui.context import build_context
from webui.settings import parse_flags
from webui.ui.blocks import build_ui


def test_choosing_a_z_image_checkpoint_sets_turbos_defaults(data_dir, zimage_files):
    shutil.copy(zimage_files["transformer"],
                data_dir / "models" / "Stable-diffusion" / "z-image-tiny.safetensors")  # fmt: skip
    ctx = build_context(parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"]))
    try:
        demo = build_ui(ctx)
        shows = [f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "show"
                 and any(getattr(o, "label", "") == "Distilled CFG Scale" for o in f.outputs)]  # fmt: skip
        assert shows  # one per generation tab
        for show in shows:
            distilled, cfg, sampler, schedule, steps = show(
                ctx.models.resolve("z-image-tiny").title
            )
            assert distilled["visible"] is False  # no guidance embedding
            assert (cfg, sampler, schedule, steps) == (1.0, "Euler", "Simple", 9)
            other = show(ctx.models.resolve("tiny-sd1").title)
            assert all(isinstance(value, type(gr.skip())) for value in other[1:])  # unchanged
    finally:
        ctx.close()
