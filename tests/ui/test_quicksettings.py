"""The quick-settings bar's logic (issue 17): the `quicksettings_list` option and what a
change in the bar does (the Settings tab's checks, saving and messages). The browser side
is in tests/ui/test_browser_habits.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from webui.context import AppContext, build_context
from webui.options import Options
from webui.settings import parse_flags
from webui.ui.common import InputError
from webui.ui.quicksettings import listed_keys
from webui.ui.settings_tab import apply_option


def _context(data: Path, *extra: str) -> AppContext:
    return build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model", *extra]))


@pytest.fixture
def ctx(data_dir) -> Iterator[AppContext]:
    context = _context(data_dir)
    yield context
    context.close()


def _config(data: Path) -> dict:
    return json.loads((data / "config.json").read_text(encoding="utf-8"))


def test_the_list_option_defaults_and_a1111_forms(tmp_path) -> None:
    options = Options()
    assert options.get("quicksettings_list") == [
        "sd_model_checkpoint", "forge_additional_modules", "sd_vae", "CLIP_stop_at_last_layers",
    ]  # fmt: skip
    options.set("quicksettings_list", "sd_model_checkpoint, sd_vae")  # A1111 before 1.6
    assert options.get("quicksettings_list") == ["sd_model_checkpoint", "sd_vae"]
    with pytest.raises(ValueError, match="quicksettings_list"):
        options.set("quicksettings_list", [1, 2])
    assert options.get("notification_audio") is False  # the sound is off by default


def test_unknown_keys_in_the_list_are_skipped(tmp_path, caplog) -> None:
    (tmp_path / "config.json").write_text(json.dumps(
        {"quicksettings_list": ["sd_vae", "gone_extension_option", "CLIP_stop_at_last_layers"]}
    ))  # fmt: skip
    context = _context(tmp_path)
    try:
        with caplog.at_level(logging.WARNING):
            assert listed_keys(context) == ["sd_vae", "CLIP_stop_at_last_layers"]
        assert "gone_extension_option" in caplog.text
    finally:
        context.close()


def test_a_change_in_the_bar_is_checked_and_saved_like_apply(ctx, data_dir) -> None:
    assert apply_option(ctx, "CLIP_stop_at_last_layers", 3.0) == (
        "1 settings changed: CLIP_stop_at_last_layers."
    )
    assert _config(data_dir)["CLIP_stop_at_last_layers"] == 3
    assert apply_option(ctx, "CLIP_stop_at_last_layers", 3) == "No change."
    with pytest.raises(InputError, match="Invalid value, nothing saved: .*between 1 and 12"):
        apply_option(ctx, "CLIP_stop_at_last_layers", 13)
    with pytest.raises(InputError, match="Invalid value, nothing saved"):
        apply_option(ctx, "sd_model_checkpoint", "no-such-model")
    with pytest.raises(InputError, match="choose a checkpoint"):
        apply_option(ctx, "sd_model_checkpoint", None)
    assert _config(data_dir)["CLIP_stop_at_last_layers"] == 3
    title = ctx.models.checkpoints()[0].title  # a name is stored as the title
    before = ctx.options.get("sd_model_checkpoint")
    expected = "No change." if before == title else "1 settings changed: sd_model_checkpoint."
    assert apply_option(ctx, "sd_model_checkpoint", "tiny-sd1") == expected
    assert _config(data_dir)["sd_model_checkpoint"] == title


def test_frozen_settings_refuse_the_bar(data_dir) -> None:
    context = _context(data_dir, "--freeze-settings")
    try:
        with pytest.raises(InputError, match="frozen"):
            apply_option(context, "CLIP_stop_at_last_layers", 2)
        assert not (data_dir / "config.json").exists() or (
            "CLIP_stop_at_last_layers" not in _config(data_dir)
        )
    finally:
        context.close()
