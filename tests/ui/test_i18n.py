"""The bilingual UI: every string of the built UI has English and 简体中文, chosen as asked."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from webui.context import build_context
from webui.settings import parse_flags
from webui.ui import i18n
from webui.ui.blocks import build_ui

ROOT = Path(__file__).resolve().parents[2]
CJK = re.compile(r"[\u4e00-\u9fff]")
SAME_IN_CHINESE = {"LoRA", "ckpt", "safetensors", "InstructP2P", "T2I-Adapter", "Sigma"}  # names


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_files):
    data = tmp_path_factory.mktemp("i18n")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], data / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    shutil.copytree(ROOT / "extensions" / "prompt_history", data / "extensions" / "prompt_history")
    ctx = build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model", "--api"]))
    demo = build_ui(ctx)
    yield ctx, demo
    ctx.close()


def test_every_ui_string_has_both_languages(built):
    ctx, demo = built
    strings = i18n.ui_strings(demo) | i18n.message_strings()
    # what the collector must see: labels, buttons, tabs, info, placeholders, Markdown, messages
    for expected in ("Sampling steps", "Generate", "PNG Info", "Extensions", "X values",
                     "Comma-separated; ranges: 1-5, 1-5 (+2), 1-10 [5]", "Search…",
                     "No checkpoint found.", "Generation failed: {}", "Prompt history",
                     "Clear my history", "Time"):  # fmt: skip
        assert any(i18n.covered(s, {expected: ""}) for s in strings), expected
    langs = i18n.languages(i18n.extension_localization_dirs(ctx))
    assert {"en", "zh_CN"} <= set(langs)
    for name in ("en", "zh_CN"):
        missing = i18n.missing(strings, langs[name])
        assert not missing, f"{name} lacks {missing}: run python -m webui.localize --update"


def test_translations_are_chinese_and_keep_placeholders():
    english = json.loads((i18n.LOCALIZATIONS / "en.json").read_text(encoding="utf-8"))
    chinese = json.loads((i18n.LOCALIZATIONS / "zh_CN.json").read_text(encoding="utf-8"))
    assert set(english) == set(chinese)
    for key, value in chinese.items():
        assert key.count("{}") == value.count("{}"), key
        assert CJK.search(value) or key in SAME_IN_CHINESE, f"{key!r} -> {value!r} is not Chinese"
    assert all(k == v for k, v in english.items())  # en.json lists the source strings
    assert chinese["txt2img"] == "文生图" and chinese["PNG Info"] == "图片信息"


def test_no_translation_is_translated_again():
    """The page translates what Gradio adds, attributes included; a translation that a
    pattern matches again ("VAE {}" -> "VAE 精度 {}") would be translated again and again,
    and it hung the Chinese page's Settings tab (an aria-label "VAE ...")."""
    chinese = json.loads((i18n.LOCALIZATIONS / "zh_CN.json").read_text(encoding="utf-8"))
    patterns = [k for k in chinese if "{}" in k]
    for key, value in chinese.items():
        sample = value.replace("{}", "x")
        again = [p for p in patterns if i18n.covered(sample, {p: chinese[p]}) and p != key]
        assert not again and (key not in patterns or not i18n.covered(sample, {key: value})), (
            f"{key!r} -> {value!r} is matched again by {again or key}"
        )
    assert "UNet {}" not in chinese and chinese["UNet bfloat16"] == "UNet 精度 bfloat16"


def test_matching_rules():
    mapping = {"Step {}/{}": "第 {}/{} 步", "Clip skip": "CLIP 终止层数"}
    assert i18n.covered("Step 3/20", mapping)
    assert i18n.covered("Clip skip (CLIP_stop_at_last_layers)", mapping)
    assert not i18n.covered("Clip", mapping)
    assert not i18n.needs_translation("🔄") and not i18n.needs_translation("model.safetensors")
    assert not i18n.needs_translation("v1.10.1") and i18n.needs_translation("Seed")
    assert i18n.markdown_texts("**No checkpoint found.** Put it into `models/`") == [
        "No checkpoint found.", "Put it into"]  # fmt: skip


def test_language_choice(tmp_path):
    known = ["en", "zh_CN"]
    assert i18n.normalize("zh-CN", known) == "zh_CN" and i18n.normalize("ZH_cn", known) == "zh_CN"
    assert i18n.normalize("Auto", known) == "auto" and i18n.normalize("klingon", known) == "auto"
    ctx = build_context(parse_flags(["--data-dir", str(tmp_path), "--no-download-sd-model"]))
    try:
        head = i18n.head_html(ctx)
        config = json.loads(re.search(r"window.webuiLocalization = (.*?);</script>", head).group(1))
        assert config["choice"] == "auto" and config["languages"]["zh_CN"]["Generate"] == "生成"
        assert "MutationObserver" in head
        ctx.options.set("localization", "zh_CN")  # the setting...
        assert i18n.chosen_language(ctx, known) == "zh_CN"
        flagged = parse_flags(["--data-dir", str(tmp_path), "--localization", "en"])
        ctx.flags = flagged  # ...and the flag, which wins
        assert i18n.chosen_language(ctx, known) == "en"
    finally:
        ctx.close()
