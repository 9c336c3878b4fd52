"""The families' presets in the generation tabs (`webui.ui.family_preset`): choosing a
Z-Image checkpoint sets Z-Image Turbo's defaults (9 steps, CFG Scale 1, Euler, Simple), as
choosing FLUX.1 dev sets Forge's FLUX preset; the page load with such a start-up checkpoint
sets them too (but not over a ui-config.json default); pasted or sent parameters with a
checkpoint keep their own values, and restore Forge's "VAE / Text Encoder" modules."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import gradio as gr
import pytest

from tests.conftest import ServerThread
from webui.app import create_app
from webui.context import build_context
from webui.imaging.infotext import build_infotext, parse_infotext
from webui.settings import parse_flags
from webui.ui.blocks import build_ui
from webui.ui.family_preset import PRESET_NAMES, preset_updates, start_updates
from webui.ui.image_common import Named


def test_choosing_a_z_image_checkpoint_sets_turbos_defaults(data_dir, zimage_files):
    shutil.copy(zimage_files["transformer"],
                data_dir / "models" / "Stable-diffusion" / "z-image-tiny.safetensors")  # fmt: skip
    ctx = build_context(parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"]))
    try:
        demo = build_ui(ctx)
        picks = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "picked"
                 and any(getattr(o, "label", "") == "CFG Scale" for o in f.outputs)]  # fmt: skip
        assert len(picks) == 3  # one per generation tab, on the user's pick only
        assert all({event for _, event in f.targets} == {"select"} for f in picks)
        shifts = [f for f in demo.fns.values() if any(getattr(o, "label", "") == "Shift"
                                                      for o in f.outputs)]  # fmt: skip
        events = {event for f in shifts for _, event in f.targets}
        assert "input" not in events and "select" in events  # a lost focus keeps a pasted Shift
        zimage = ctx.models.resolve("z-image-tiny").title
        distilled, cfg, sampler, schedule, steps = preset_updates(ctx, zimage)
        assert distilled["visible"] is False  # no guidance embedding
        assert (cfg, sampler, schedule, steps) == (1.0, "Euler", "Simple", 9)
        other = preset_updates(ctx, ctx.models.resolve("tiny-sd1").title)
        assert all(isinstance(value, type(gr.skip())) for value in other[1:])  # unchanged
    finally:
        ctx.close()


def test_the_start_up_preset_keeps_what_ui_config_sets(data_dir, zimage_files):
    shutil.copy(zimage_files["transformer"],
                data_dir / "models" / "Stable-diffusion" / "z-image-tiny.safetensors")  # fmt: skip
    ctx = build_context(parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"]))
    try:
        with gr.Blocks():
            named = Named()
            labels = ("Distilled CFG Scale", "CFG Scale", "Sampling method", "Schedule type",
                      "Sampling steps", "Shift")  # fmt: skip
            for name, label in zip((*PRESET_NAMES, "shift"), labels, strict=True):
                named.add(name, gr.Textbox(label=label))
        title = ctx.models.resolve("z-image-tiny").title
        saved = {"txt2img/CFG Scale/value", "txt2img/Shift/value"}
        distilled, cfg, sampler, schedule, steps, shift = start_updates(
            ctx, {"txt2img": named}, saved, title
        )
        assert isinstance(cfg, type(gr.skip()))  # the user's saved default stays
        assert (sampler, schedule, steps) == ("Euler", "Simple", 9)
        assert shift == {"__type__": "update", "visible": True}  # shown, its value kept
        free = start_updates(ctx, {"img2img": named}, saved, title)
        assert free[1] == 1.0 and free[5]["value"] == 3  # Z-Image Turbo's shift
    finally:
        ctx.close()


# --- in Chromium -----------------------------------------------------------------------------

MODULES = {"VAE": ["vae"], "text_encoder": ["clip_l", "t5xxl"]}
FILES = {"vae": "ae.safetensors", "clip_l": "clip_l.safetensors", "t5xxl": "t5xxl_fp16.safetensors"}


@pytest.fixture
def flux_server(data_dir, flux_files):
    models = data_dir / "models"
    shutil.copy(flux_files["transformer"], models / "Stable-diffusion" / "flux1-tiny.safetensors")
    for folder, kinds in MODULES.items():
        (models / folder).mkdir(exist_ok=True)
        for kind in kinds:
            shutil.copy(flux_files[kind], models / folder / FILES[kind])
    config = {"sd_model_checkpoint": "flux1-tiny.safetensors"}  # the start-up checkpoint
    (data_dir / "config.json").write_text(json.dumps(config))
    flags = parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"])
    with ServerThread(create_app(flags)) as srv:
        yield srv


def _number(page, label: str) -> str:
    return (
        page.locator("#tab_txt2img")
        .get_by_role("spinbutton", name=f"number input for {label}", exact=True)
        .input_value()
    )


def _dropdown(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input").input_value()


def _wait(page, read, wanted) -> None:
    for _ in range(300):
        if read() == wanted:
            return
        page.wait_for_timeout(100)
    assert read() == wanted


def _pick(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option").filter(has_text=text).first.click()
    page.wait_for_timeout(1000)  # the pick's events have run


def _preset(page) -> tuple[str, str, str]:
    return (
        _number(page, "CFG Scale"),
        _dropdown(page, "txt2img_sampling"),
        _dropdown(page, "txt2img_scheduler"),
    )


def _modules(page) -> list[str]:
    return page.locator("#txt2img_modules .token").all_inner_texts()


@pytest.mark.browser
def test_flux_preset_on_load_and_pick_and_pasted_values_and_modules_stay(browser, flux_server):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(flux_server.url, wait_until="load")
    # (b) the start-up checkpoint (flux1-tiny) gets Forge's FLUX preset on page load
    _wait(page, lambda: _dropdown(page, "sd_checkpoint").startswith("flux1-tiny"), True)
    _wait(page, lambda: _preset(page), ("1", "Euler", "Simple"))
    assert page.locator("#txt2img_distilled_cfg").is_visible()
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "1-loaded.png"), full_page=True)
    # the user's pick of an SD 1.x checkpoint only hides the slider
    page.locator("#tab_txt2img").get_by_role("spinbutton", name="number input for CFG Scale").fill(
        "7"
    )
    _pick(page, "txt2img_sampling", "DPM++ 2M")
    _pick(page, "sd_checkpoint", "tiny-sd1")
    _wait(page, lambda: page.locator("#txt2img_distilled_cfg").is_visible(), False)
    page.wait_for_timeout(3000)  # the pick's events (Gradio sends two) have run
    assert _preset(page)[:2] == ("7", "DPM++ 2M")
    # (c) parameters pasted with a FLUX checkpoint keep their CFG, schedule and steps, and
    # choose the modules they name
    fields = {"Steps": 3, "Sampler": "Euler", "Schedule type": "Beta", "CFG scale": 2.5,
              "Distilled CFG Scale": 4.5, "Seed": 77, "Size": "64x64", "Model": "flux1-tiny",
              "Module 1": "ae", "Module 2": "clip_l", "Module 3": "t5xxl_fp16"}  # fmt: skip
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill(build_infotext("a red kite", "", fields))
    page.locator("#txt2img_paste").click()
    _wait(page, lambda: _dropdown(page, "sd_checkpoint").startswith("flux1-tiny"), True)
    _wait(page, lambda: _modules(page), FILES_SHOWN)
    _wait(page, lambda: page.locator("#txt2img_distilled_cfg").is_visible(), True)
    page.wait_for_timeout(3000)  # the checkpoint's change events have run
    assert _preset(page) == ("2.5", "Euler", "Beta")
    # the picker opened and left without a pick (Gradio sends "input" on blur): they stay
    page.locator("#sd_checkpoint input").click()
    page.keyboard.press("Escape")
    prompt.click()
    page.wait_for_timeout(3000)
    assert _preset(page) == ("2.5", "Euler", "Beta")
    assert _number(page, "Sampling steps") == "3"
    assert _number(page, "Distilled CFG Scale") == "4.5"
    page.screenshot(path=str(SHOTS / "2-pasted.png"), full_page=True)
    # generating gives the infotext that was pasted
    page.locator("#txt2img_generate").click()
    page.wait_for_function(
        "() => /Seed: 77/.test(document.querySelector('#txt2img_infotext pre')?.innerText)",
        timeout=300_000,
    )
    made = parse_infotext(page.locator("#txt2img_infotext pre").inner_text())
    for key, value in fields.items():
        assert str(made[key]) == str(value), key
    assert made["Prompt"] == "a red kite"
    page.screenshot(path=str(SHOTS / "3-generated.png"), full_page=True)
    # (a) the user's own pick of the FLUX checkpoint sets the preset over pasted values
    _pick(page, "sd_checkpoint", "tiny-sd1")
    _wait(page, lambda: page.locator("#txt2img_distilled_cfg").is_visible(), False)
    _pick(page, "sd_checkpoint", "flux1-tiny")
    _wait(page, lambda: _preset(page), ("1", "Euler", "Simple"))
    # a module the server lacks is named, not dropped in silence
    prompt.fill(build_infotext("a kite", "", {**fields, "Module 3": "t5xxl_fp8_e4m3fn"}))
    page.locator("#txt2img_paste").click()
    page.get_by_text("no module file t5xxl_fp8_e4m3fn").first.wait_for(timeout=60_000)
    _wait(page, lambda: _modules(page), FILES_SHOWN[:2])
    page.screenshot(path=str(SHOTS / "4-missing-module.png"), full_page=True)
    page.close()  # before the server stops: an open page's stream would hold it


FILES_SHOWN = ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]
SHOTS = Path(tempfile.gettempdir()) / "flux-preset-shots"  # to look at after a run
