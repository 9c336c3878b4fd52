"""FLUX.1 Fill and Kontext as diffusers folders (saved by diffusers' `save_pretrained`),
and a FLUX.1 file marked as Kontext in its user metadata (`name.json`, `flux_variant`):
recognised, loaded as the class their family runs, and followed by a model already
loaded when the mark changes."""

from __future__ import annotations

import json

import pytest
import torch

from webui.core.families import FLUX1, FLUX1_FILL, FLUX1_KONTEXT, default_families
from webui.model_manager import tiny_flux
from webui.model_manager.loader import identify_file, load_checkpoint
from webui.model_manager.user_metadata import flux_variant, set_flux_variant

FAMILIES = default_families()


@pytest.fixture(scope="module")
def pipes():
    return {"dev": tiny_flux.build_tiny_flux(seed=3),
            "fill": tiny_flux.build_tiny_flux(seed=3, fill=True)}  # fmt: skip


def _save(pipe, class_name: str, folder):
    import diffusers

    target = getattr(diffusers, class_name)
    components = {k: v for k, v in pipe.components.items() if k not in ("image_encoder",
                                                                         "feature_extractor")}  # fmt: skip
    if class_name != "FluxFillPipeline":
        components |= {"image_encoder": None, "feature_extractor": None}
    target(**components).save_pretrained(folder, safe_serialization=True)
    return folder


def _loaded(folder):
    return load_checkpoint(folder, "cpu", torch.float32, FAMILIES)


@pytest.mark.parametrize("class_name", ["FluxFillPipeline", "FluxPipeline"])
def test_a_fill_folder_is_told_by_its_transformers_in_channels(pipes, tmp_path, class_name):
    model = _loaded(_save(pipes["fill"], class_name, tmp_path / "my-inpainter"))
    assert model.family is FLUX1_FILL and model.spec.family == FLUX1_FILL.name
    assert type(model.pipe).__name__ == "FluxFillPipeline" and model.spec.inpainting
    assert model.pipe.transformer.config.in_channels == tiny_flux.FILL_IN_CHANNELS


def test_a_kontext_folder_by_class_name_or_mark_and_dev_as_before(pipes, tmp_path):
    kontext = _loaded(_save(pipes["dev"], "FluxKontextPipeline", tmp_path / "edits"))
    assert kontext.family is FLUX1_KONTEXT and kontext.spec.family_label == "FLUX.1 Kontext"
    assert type(kontext.pipe).__name__ == "FluxPipeline"  # run as FLUX.1, reference by hooks
    named = _loaded(_save(pipes["dev"], "FluxPipeline", tmp_path / "FLUX.1-Kontext-dev"))
    assert named.family is FLUX1_KONTEXT
    plain = _save(pipes["dev"], "FluxPipeline", tmp_path / "flux-dev")
    assert _loaded(plain).family is FLUX1
    index = json.loads((plain / "transformer" / "config.json").read_text())
    (plain / "transformer" / "config.json").write_text(
        json.dumps(index | {"_name_or_path": "black-forest-labs/FLUX.1-Kontext-dev"}))  # fmt: skip
    assert _loaded(plain).family is FLUX1_KONTEXT
    other = _save(pipes["dev"], "FluxPipeline", tmp_path / "flux-dev-2")
    set_flux_variant(other, "kontext")
    assert (tmp_path / "flux-dev-2.json").is_file()
    assert _loaded(other).family is FLUX1_KONTEXT


def test_a_renamed_kontext_file_runs_as_kontext_once_marked(pipes, tmp_path):
    path = tiny_flux.save_transformer(pipes["dev"], tmp_path / "my-edit-model.safetensors")
    assert identify_file(path, FAMILIES).family == FLUX1.name
    (tmp_path / "my-edit-model.json").write_text(json.dumps({"notes": "mine"}))
    set_flux_variant(path, "kontext")
    assert flux_variant(path) == "kontext"
    assert json.loads((tmp_path / "my-edit-model.json").read_text()) == {
        "notes": "mine", "flux_variant": "kontext"}  # fmt: skip
    assert identify_file(path, FAMILIES).family == FLUX1_KONTEXT.name
    set_flux_variant(path, "")
    assert identify_file(path, FAMILIES).family == FLUX1.name
    with pytest.raises(ValueError, match="unknown FLUX.1 variant"):
        set_flux_variant(path, "fill")
