"""Forge's `Module N` infotext fields read back into "VAE / Text Encoder" names."""

from __future__ import annotations

from webui.core.infotext_modules import (
    infotext_modules,
    match_modules,
    pasted_modules,
)
from webui.imaging.infotext import parse_infotext

TEXT = (
    "a cat\nSteps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, "
    "Distilled CFG Scale: 3.5, Seed: 1, Size: 64x64, Model: flux1-tiny, "
    "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp8_e4m3fn, Version: f2.0.1"
)
SERVER = ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]


def test_the_module_fields_of_a_forge_infotext_in_their_order():
    fields = parse_infotext(TEXT)
    assert infotext_modules(fields) == ["ae", "clip_l", "t5xxl_fp8_e4m3fn"]
    # ordered by N, not by position; "Module 10" after "Module 2"; empty values skipped
    shuffled = {
        "Module 10": "c",
        "Module 2": "b",
        "Module 1": "a",
        "Module 3": " ",
        "Hires Module 1": "x",
    }
    assert infotext_modules(shuffled) == ["a", "b", "c"]
    assert infotext_modules(parse_infotext("a cat\nSteps: 20, Seed: 1, Size: 64x64")) == []


def test_stems_match_the_servers_files_and_what_it_lacks_is_named():
    pasted = pasted_modules(parse_infotext(TEXT), SERVER)
    assert pasted is not None
    assert pasted.names == ("ae.safetensors", "clip_l.safetensors")
    assert pasted.missing == ("t5xxl_fp8_e4m3fn",)
    assert pasted.shown() == ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp8_e4m3fn"]
    assert pasted_modules({"Steps": 20}, SERVER) is None


def test_a_full_name_matches_too_and_a_stem_is_not_a_prefix():
    assert match_modules(["ae.sft", "ae"], ["ae.sft", "ae.safetensors"]).names == ("ae.sft",)
    assert match_modules(["clip"], ["clip_l.safetensors"]).missing == ("clip",)
    assert match_modules(["123"], ["123.safetensors"]).names == ("123.safetensors",)
