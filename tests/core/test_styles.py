"""styles.csv: reading A1111's file, applying, saving, editing and deleting styles."""

from __future__ import annotations

import pytest

from webui.context import build_context
from webui.core.params import Txt2ImgParams
from webui.core.styles import PromptStyle, StyleDatabase, StyleError, merge_prompts
from webui.imaging.infotext import parse_infotext
from webui.settings import parse_flags

A1111_FILE = """name,prompt,negative_prompt
"cinematic","cinematic still of {prompt}, film grain","cartoon, drawing"
"sharp","sharp focus, 8k",
"dark","","bright"
"""


@pytest.fixture
def styles(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(A1111_FILE, encoding="utf-8")
    return StyleDatabase(path)


def test_merge_prompts():
    assert merge_prompts("art of {prompt}, oil", "a cat") == "art of a cat, oil"
    assert merge_prompts("oil painting", "a cat") == "a cat, oil painting"
    assert merge_prompts("oil painting", "") == "oil painting"
    assert merge_prompts("", "a cat ") == "a cat"
    assert merge_prompts("{prompt} {prompt}", "x") == "x x"


def test_apply_styles_in_order(styles):
    assert styles.names() == ["cinematic", "sharp", "dark"]
    prompt, negative, missing = styles.apply(["cinematic", "sharp", "nope"], "a cat", "blurry")
    assert prompt == "cinematic still of a cat, film grain, sharp focus, 8k"
    assert negative == "blurry, cartoon, drawing"
    assert missing == ["nope"]
    assert styles.apply(["dark"], "a cat", "") == ("a cat", "bright", [])


def test_save_edit_rename_delete(styles, tmp_path):
    styles.save_style(PromptStyle("new, with comma", 'say "hi" {prompt}', "ugly"))
    styles.save_style(PromptStyle("sharper", "very sharp", ""), replace="sharp")
    styles.delete("dark")
    again = StyleDatabase(tmp_path / "styles.csv")  # what is on disk
    assert again.names() == ["cinematic", "new, with comma", "sharper"]
    assert again.get("new, with comma") == PromptStyle(
        "new, with comma", 'say "hi" {prompt}', "ugly"
    )
    with pytest.raises(StyleError):
        styles.delete("dark")
    with pytest.raises(StyleError):
        styles.save_style(PromptStyle("  ", "x", ""))


def test_changes_on_disk_are_seen(styles, tmp_path):
    (tmp_path / "styles.csv").write_text(
        "name,prompt,negative_prompt\nonly,x,y\n", encoding="utf-8"
    )
    assert styles.names() == ["only"]


def test_missing_file_means_no_styles_and_saving_creates_it(tmp_path):
    db = StyleDatabase(tmp_path / "sub" / "styles.csv")
    assert db.names() == []
    db.save_style(PromptStyle("a", "b", "c"))
    assert (tmp_path / "sub" / "styles.csv").read_text().splitlines() == [
        "name,prompt,negative_prompt",
        "a,b,c",
    ]


def test_styles_apply_to_a_job_and_its_infotext(data_dir):
    (data_dir / "styles.csv").write_text(A1111_FILE, encoding="utf-8")
    ctx = build_context(parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"]))
    try:
        params = Txt2ImgParams(prompt="a cat", negative_prompt="blurry", steps=1, width=64,
                               height=64, seed=1, save_images=False,
                               styles=("cinematic", "missing")).validated()  # fmt: skip
        job = ctx.jobs.submit("txt2img", params, owner="test")
        assert job.done.wait(300) and job.state == "done", job.error
        fields = parse_infotext(job.result.images[0].infotext)
        assert fields["Prompt"] == "cinematic still of a cat, film grain"
        assert fields["Negative prompt"] == "blurry, cartoon, drawing"
        assert job.result.warnings == ["Style not found: missing"]
    finally:
        ctx.close()
