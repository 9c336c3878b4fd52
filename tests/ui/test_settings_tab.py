"""The Settings tab's logic (issue 19): what a page shows, what Apply writes, widgets.

A page shows the stored options when it loads and remembers them; Apply writes only the
options the user changed from what that page showed, compared in the option's type, so
a stale page never writes old values back. The default checkpoint is shown and recorded.
The browser side is in tests/ui/test_browser_settings.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest

from webui.app import load_startup_checkpoint
from webui.context import AppContext, build_context
from webui.options import OPTION_DEFS, SECTIONS, Options
from webui.settings import parse_flags
from webui.ui.settings_tab import apply_settings, changed_options, control_updates, shown_values

ROOT = Path(__file__).resolve().parents[2]
PREVIEW, CLIP = "show_progress_every_n_steps", "CLIP_stop_at_last_layers"


def _context(data: Path, *extra: str) -> AppContext:
    return build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model", *extra]))


@pytest.fixture
def ctx(data_dir) -> Iterator[AppContext]:
    context = _context(data_dir)
    yield context
    context.close()


def _form(shown: dict, **changes) -> list:
    """What a page sends on Apply: what it showed, with the user's changes."""
    return [changes.get(d.key, shown[d.key]) for d in OPTION_DEFS]


def _config(data: Path) -> dict:
    return json.loads((data / "config.json").read_text(encoding="utf-8"))


def test_controls_send_values_in_their_own_form_and_that_is_no_change() -> None:
    shown = Options().as_dict()
    # what Gradio sends back for untouched controls: a Number 3.0, a slider 0, text "0.0"
    sent = {PREVIEW: 3.0, "sd_checkpoints_limit": 1.0, "token_merging_ratio": "0.0",
            "samples_filename_pattern": None, "vae_tiling_threshold": 1536}  # fmt: skip
    assert changed_options(OPTION_DEFS, shown, _form(shown, **sent)) == {}
    changed = changed_options(OPTION_DEFS, shown, _form(shown, **{PREVIEW: 7.0}))
    assert changed == {PREVIEW: 7} and isinstance(changed[PREVIEW], int)
    assert changed_options(OPTION_DEFS, shown, _form(shown, token_merging_ratio=0.5)) == {
        "token_merging_ratio": 0.5
    }


def test_a_stale_page_writes_only_what_its_user_changed(ctx, data_dir) -> None:
    page_a = shown_values(ctx)  # two pages open on the same server
    page_b = shown_values(ctx)
    message = apply_settings(ctx, page_b, _form(page_b, **{PREVIEW: 7}))
    assert message == f"1 settings changed: {PREVIEW}."
    assert _config(data_dir)[PREVIEW] == 7
    assert shown_values(ctx)[PREVIEW] == 7  # what a reload or another browser shows

    # page A still shows 3 for the preview; its user changes Clip skip only
    message = apply_settings(ctx, page_a, _form(page_a, **{CLIP: 2}))
    assert message == f"1 settings changed: {CLIP}."
    assert (_config(data_dir)[PREVIEW], _config(data_dir)[CLIP]) == (7, 2)
    assert apply_settings(ctx, page_a, _form(page_a)) == "No change."
    # changing a value back to what the page showed is no change either
    assert apply_settings(ctx, page_a, _form(page_a, **{CLIP: 1.0})) == "No change."
    assert ctx.options.get(CLIP) == 2


def test_the_user_changing_a_value_wins_and_equal_values_are_no_change(ctx) -> None:
    page_a, page_b = shown_values(ctx), shown_values(ctx)
    apply_settings(ctx, page_b, _form(page_b, **{PREVIEW: 7}))
    assert apply_settings(ctx, page_a, _form(page_a, **{PREVIEW: 7})) == "No change."
    assert apply_settings(ctx, page_a, _form(page_a, **{PREVIEW: 5})).endswith(f"{PREVIEW}.")
    assert ctx.options.get(PREVIEW) == 5


def test_a_secret_option_shows_masked_and_applying_the_page_keeps_it(ctx) -> None:
    ctx.options.set("huggingface_token", "hf_secret")
    try:
        shown = shown_values(ctx)
        assert shown["huggingface_token"] == "********"  # the page never gets the token
        assert apply_settings(ctx, shown, _form(shown)) == "No change."
        apply_settings(ctx, shown, _form(shown, **{PREVIEW: 6}))
        assert ctx.options.get("huggingface_token") == "hf_secret"
        apply_settings(ctx, shown, _form(shown, huggingface_token="hf_new"))
        assert ctx.options.get("huggingface_token") == "hf_new"
    finally:
        ctx.options.set("huggingface_token", "")


def test_invalid_values_save_nothing(ctx, data_dir) -> None:
    shown = shown_values(ctx)
    with pytest.raises(gr.Error, match=CLIP):
        apply_settings(ctx, shown, _form(shown, **{PREVIEW: 5, CLIP: 13}))
    with pytest.raises(gr.Error, match="samples_format"):
        apply_settings(ctx, shown, _form(shown, samples_format="bmp"))
    with pytest.raises(gr.Error, match="sd_checkpoints_limit"):
        apply_settings(ctx, shown, _form(shown, sd_checkpoints_limit=None))  # a cleared Number
    with pytest.raises(gr.Error, match="checkpoint not found"):
        apply_settings(ctx, shown, _form(shown, sd_model_checkpoint="missing.safetensors"))
    with pytest.raises(gr.Error, match="reload the page"):  # a page that has not loaded
        apply_settings(ctx, {}, _form(shown, **{PREVIEW: 5}))
    assert ctx.options.get(PREVIEW) == 3 and not (data_dir / "config.json").exists()


def test_the_checkpoint_shows_what_jobs_use_and_a_choice_is_saved_and_loaded(
    data_dir, tiny_files
) -> None:
    folder = data_dir / "models" / "Stable-diffusion"
    shutil.copy(tiny_files["sd1"], folder / "another.safetensors")
    ctx = _context(data_dir)
    try:
        titles = [i.title for i in ctx.models.checkpoints()]
        shown = shown_values(ctx)
        assert shown["sd_model_checkpoint"] == ctx.models.resolve(None).title  # option empty
        update = control_updates(ctx, shown)[0]
        assert update["choices"] == titles and update["value"] == shown["sd_model_checkpoint"]
        other = next(t for t in titles if t != shown["sd_model_checkpoint"])
        message = apply_settings(ctx, shown, _form(shown, sd_model_checkpoint=other))
        assert message == "1 settings changed: sd_model_checkpoint."
        assert _config(data_dir)["sd_model_checkpoint"] == other
        assert shown_values(ctx)["sd_model_checkpoint"] == other
        load = [j for j in ctx.jobs.jobs() if j.kind == "load"]
        assert [j.params for j in load] == [other]  # A1111 loads the chosen checkpoint
        assert ctx.jobs.wait(load[0], timeout=300)
    finally:
        ctx.close()


def test_the_startup_checkpoint_is_recorded_in_config_json(data_dir, tiny_files) -> None:
    ctx = _context(data_dir)
    try:
        load_startup_checkpoint(ctx)
        title = ctx.models.resolve(None).title
        assert _config(data_dir)["sd_model_checkpoint"] == title == "tiny-sd1.safetensors"
        assert shown_values(ctx)["sd_model_checkpoint"] == title
        (load,) = [j for j in ctx.jobs.jobs() if j.kind == "load"]
        assert load.params == title and ctx.jobs.wait(load, timeout=300)
        # once loaded, its hash is known: the title A1111 stores, "name [hash]"
        hashed = ctx.models.resolve(None).title
        assert re.fullmatch(r"tiny-sd1\.safetensors \[[0-9a-f]{10}\]", hashed)
        deadline = time.monotonic() + 60
        while _config(data_dir)["sd_model_checkpoint"] != hashed and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _config(data_dir)["sd_model_checkpoint"] == hashed
        assert shown_values(ctx)["sd_model_checkpoint"] == hashed
    finally:
        ctx.close()

    (data_dir / "config.json").write_text('{"sd_model_checkpoint": "tiny-sd1"}')
    ctx = _context(data_dir)  # an option naming the checkpoint some other way is kept
    try:
        load_startup_checkpoint(ctx)
        assert _config(data_dir)["sd_model_checkpoint"] == "tiny-sd1"
        assert shown_values(ctx)["sd_model_checkpoint"] == ctx.models.resolve(None).title
    finally:
        ctx.close()

    (data_dir / "config.json").write_text('{"sd_model_checkpoint": "gone.safetensors"}')
    ctx = _context(data_dir)  # a checkpoint that is gone: the one used instead is recorded
    try:
        load_startup_checkpoint(ctx)
        assert _config(data_dir)["sd_model_checkpoint"].startswith("tiny-sd1.safetensors")
    finally:
        ctx.close()

    (data_dir / "config.json").unlink()
    ctx = _context(data_dir, "--freeze-settings")  # frozen: loaded, never written
    try:
        load_startup_checkpoint(ctx)
        assert not (data_dir / "config.json").exists()
        assert [j.kind for j in ctx.jobs.jobs()] == ["load"]
    finally:
        ctx.close()

    outside = data_dir / "elsewhere" / "picked.safetensors"
    outside.parent.mkdir()
    shutil.copy(tiny_files["sd1"], outside)
    ctx = _context(data_dir, "--ckpt", str(outside))  # --ckpt: the server's checkpoint now
    try:
        load_startup_checkpoint(ctx)
        assert _config(data_dir)["sd_model_checkpoint"].startswith("picked.safetensors")
    finally:
        ctx.close()


def test_frozen_settings_refuse_changes_but_not_an_unchanged_form(data_dir) -> None:
    ctx = _context(data_dir, "--freeze-settings")
    try:
        shown = shown_values(ctx)
        with pytest.raises(gr.Error, match="frozen"):
            apply_settings(ctx, shown, _form(shown, **{PREVIEW: 9}))
        assert apply_settings(ctx, shown, _form(shown, **{PREVIEW: 3.0})) == "No change."
        assert not (data_dir / "config.json").exists()
    finally:
        ctx.close()


def test_a_stored_value_outside_the_choices_is_shown(data_dir) -> None:
    (data_dir / "config.json").write_text('{"sd_vae": "gone.safetensors", "localization": "zh_CN"}')
    ctx = _context(data_dir)
    try:
        shown = control_updates(ctx, shown_values(ctx))
        updates = dict(zip((d.key for d in OPTION_DEFS), shown, strict=True))
        assert updates["sd_vae"]["value"] == "gone.safetensors"
        assert updates["sd_vae"]["choices"] == ["Automatic", "None", "gone.safetensors"]
        assert updates["localization"]["choices"] == ["Auto", "en", "zh_CN"]
        assert updates["localization"]["value"] == "zh_CN"
        assert updates["samples_format"]["choices"] == ["png", "jpg", "jpeg", "webp"]
    finally:
        ctx.close()


def test_widgets_and_sections() -> None:
    widgets = {d.key: d.widget for d in OPTION_DEFS}
    assert widgets == {
        "sd_model_checkpoint": "dropdown", "sd_checkpoints_limit": "number", "sd_vae": "dropdown",
        "CLIP_stop_at_last_layers": "slider", "vae_tiling_threshold": "number",
        "vae_slicing_threshold": "number", "oom_retry_lower_memory": "checkbox",
        "token_merging_ratio": "slider", "initial_noise_multiplier": "slider",
        "img2img_extra_noise": "slider", "s_min_uncond": "slider", "s_min_uncond_all": "checkbox",
        "text_encoder_release": "dropdown",
        "eta_ddim": "slider", "eta_ancestral": "slider", "s_churn": "slider", "s_tmin": "slider",
        "s_tmax": "slider", "s_noise": "slider", "show_progress_every_n_steps": "number",
        "quicksettings_list": "multiselect", "notification_audio": "checkbox",
        "notification_min_seconds": "number", "notification_volume": "slider",
        "keyedit_precision_attention": "slider", "keyedit_precision_extra": "slider",
        "localization": "dropdown", "queue_limit_per_user": "number", "queue_show_others_prompts": "checkbox",
        "samples_format": "dropdown", "samples_filename_pattern": "textbox",
        "outdir_samples": "textbox", "show_progress_type": "dropdown", "return_grid": "checkbox",
        "save_images_add_number": "checkbox", "grid_save": "checkbox", "grid_format": "dropdown",
        "grid_only_if_multiple": "checkbox", "n_rows": "slider", "jpeg_quality": "slider",
        "webp_lossless": "checkbox", "save_to_dirs": "checkbox", "grid_save_to_dirs": "checkbox",
        "directories_filename_pattern": "textbox", "outdir_save": "textbox",
        "interrogate_keep_models_in_memory": "checkbox", "interrogate_return_ranks": "checkbox",
        "interrogate_clip_num_beams": "slider", "interrogate_clip_min_length": "slider",
        "interrogate_clip_max_length": "slider", "interrogate_clip_dict_limit": "number",
        "interrogate_clip_skip_categories": "multiselect",
        "interrogate_deepbooru_score_threshold": "slider", "deepbooru_sort_alpha": "checkbox",
        "deepbooru_use_spaces": "checkbox", "deepbooru_escape": "checkbox",
        "deepbooru_filter_tags": "textbox", "interrogate_wd14_model": "textbox",
        "interrogate_wd14_general_threshold": "slider",
        "interrogate_wd14_character_threshold": "slider",
        "image_browser_folders": "textbox",
        "civitai_api_key": "textbox", "huggingface_token": "textbox",
        "huggingface_base_url": "textbox", "civitai_base_url": "textbox",
        "face_restoration_model": "dropdown", "code_former_weight": "slider",
        "sdxl_refiner_low_aesthetic_score": "slider", "sdxl_refiner_high_aesthetic_score": "slider",
        "forge_additional_modules": "multiselect", "sd_vae_decode_method": "dropdown",
        "sd_vae_encode_method": "dropdown",
        "control_net_no_detectmap": "checkbox", "control_net_unit_count": "number",
        "eta_tcd": "slider", "deepcache_interval": "slider", "deepcache_branch": "slider",
        "first_block_cache_threshold": "slider", "taylorseer_interval": "slider",
        "training_yield_to_jobs": "checkbox",
    }  # fmt: skip
    assert list(SECTIONS.values()) == ["Stable Diffusion", "VAE", "Optimizations", "img2img",
                                       "Sampler parameters", "User interface", "Queue",
                                       "Saving images/grids", "Paths for saving",
                                       "Interrogate", "Model downloads",
                                       "Face restoration", "Stable Diffusion XL",
                                       "ControlNet", "Speed", "Training"]  # fmt: skip
    assert all(d.section in SECTIONS for d in OPTION_DEFS)
    for definition in OPTION_DEFS:  # a slider's bounds are the validator's
        if definition.widget == "slider":
            definition.validate(definition.minimum)
            definition.validate(definition.maximum)
            with pytest.raises(ValueError):
                definition.validate(definition.maximum + definition.step)


def test_options_module_imports_only_the_standard_library() -> None:
    code = (
        "import sys, webui.options; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'gradio', 'fastapi', 'pydantic', 'PIL', 'numpy') or m.startswith('webui.ui')]; "
        "print(bad)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_a_bad_file_name_pattern_is_a_clear_message(ctx) -> None:
    shown = shown_values(ctx)
    form = _form(shown, samples_filename_pattern="[seed]-[sead]")
    with pytest.raises(gr.Error, match=r"unknown token \[sead\].*known tokens: \[seed\]"):
        apply_settings(ctx, shown, form)
    assert ctx.options.get("samples_filename_pattern") == ""
    form = _form(shown, directories_filename_pattern="[date]/[model_name]", jpeg_quality=95.0)
    assert apply_settings(ctx, shown, form) == (
        "2 settings changed: jpeg_quality, directories_filename_pattern."
    )
