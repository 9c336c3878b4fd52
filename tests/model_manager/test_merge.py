"""The Checkpoint Merger's tensor work (model_manager/merge.py) on tiny checkpoints.

Each merged file is compared with the arithmetic A1111's formulas predict, tensor by
tensor, and loaded through this program's loader (diffusers' `from_single_file`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.tiny_networks import write_ldm_vae
from webui.core.families import default_families
from webui.model_manager.loader import load_checkpoint
from webui.model_manager.merge import (
    MergeError,
    MergeModel,
    merge_checkpoints,
    vae_for_baking,
)
from webui.model_manager.merge_params import (
    CheckpointMergeParams,
    MergeInputError,
    check_merge,
    parse_loras,
)
from webui.model_manager.tiny import build_tiny_pipeline, save_tiny_checkpoint

A, B, C = "primary_model_name", "secondary_model_name", "tertiary_model_name"


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_files) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge-inputs")
    files = {"a": root / "a.safetensors", "inpaint": root / "inp.safetensors"}
    shutil.copy(tiny_files["sd1"], files["a"])
    shutil.copy(tiny_files["sd1-inpaint"], files["inpaint"])
    for name, seed in (("b", 1), ("c", 2)):
        files[name] = save_tiny_checkpoint(root / f"{name}.safetensors", "sd1", seed=seed)
    files["vae"] = write_ldm_vae(root / "vae.safetensors", build_tiny_pipeline("sd1"))
    return files


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def inputs(models, **fields) -> dict[str, MergeModel]:
    return {field: MergeModel(models[key], f"{key}.safetensors", f"sha-{key}")
            for field, key in fields.items()}  # fmt: skip


def merge(tmp_path, models, params, **fields):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return merge_checkpoints(params, inputs(models, **fields), out)


def test_weighted_sum_is_the_arithmetic_tensor_by_tensor(tmp_path, models):
    params = CheckpointMergeParams("a", "b", multiplier=0.7)
    outcome = merge(tmp_path, models, params, **{A: "a", B: "b"})
    assert outcome.path.name == "0.3(a) + 0.7(b).safetensors"  # A1111's default name
    a, b, merged = tensors(models["a"]), tensors(models["b"]), tensors(outcome.path)
    assert merged.keys() == a.keys()
    for key, value in merged.items():
        if a[key].is_floating_point():
            assert torch.equal(value, a[key] * 0.3 + b[key] * 0.7), key
        else:
            assert torch.equal(value, a[key]), key
    assert not list(outcome.path.parent.glob(".*"))  # no temporary file left


def test_merged_file_loads_with_the_weights_the_recipe_predicts(tmp_path, models):
    outcome = merge(tmp_path, models, CheckpointMergeParams("a", "b", multiplier=0.7),
                    **{A: "a", B: "b"})  # fmt: skip
    families = default_families()
    pipes = [load_checkpoint(p, "cpu", torch.float32, families).pipe
             for p in (models["a"], models["b"], outcome.path)]  # fmt: skip
    a, b, merged = (p.unet.state_dict() for p in pipes)
    for key, value in merged.items():
        torch.testing.assert_close(value, a[key] * 0.3 + b[key] * 0.7, rtol=0, atol=1e-6)
    ta, tb, tm = (p.text_encoder.state_dict() for p in pipes)
    for key, value in tm.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, ta[key] * 0.3 + tb[key] * 0.7, rtol=0, atol=1e-6)


def test_add_difference(tmp_path, models):
    params = CheckpointMergeParams("a", "b", "c", interp_method="Add difference", multiplier=0.4)
    outcome = merge(tmp_path, models, params, **{A: "a", B: "b", C: "c"})
    assert outcome.path.name == "a + 0.4(b - c).safetensors"
    a, b, c = tensors(models["a"]), tensors(models["b"]), tensors(models["c"])
    for key, value in tensors(outcome.path).items():
        if a[key].is_floating_point():
            assert torch.equal(value, a[key] + (b[key] - c[key]) * 0.4), key


def test_no_interpolation_fp16_discard_and_bake_in_vae(tmp_path, models):
    vae = vae_for_baking(models["vae"])
    params = CheckpointMergeParams("a", interp_method="No interpolation", save_as_half=True,
                                   discard_weights=r"^cond_stage_model\..*\.mlp\.", custom_name="x")  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    outcome = merge_checkpoints(params, inputs(models, **{A: "a"}), out, vae=vae)
    assert outcome.path.name == "x.safetensors"
    a, merged = tensors(models["a"]), tensors(outcome.path)
    dropped = {k for k in a if k.startswith("cond_stage_model.") and ".mlp." in k}
    assert dropped and merged.keys() == a.keys() - dropped
    for key, value in merged.items():
        if key.startswith("first_stage_model."):
            expected = vae[key.removeprefix("first_stage_model.")]
            assert not torch.equal(expected, a[key])  # the VAE file really differs
        else:
            expected = a[key]
        if expected.dtype == torch.float32:
            expected = expected.half()
        assert value.dtype == expected.dtype and torch.equal(value, expected), key


def test_metadata_recipe_copied_fields_and_json(tmp_path, models):
    own = tmp_path / "own.safetensors"
    recipe_b = {"type": "webui", "multiplier": 0.1}
    save_file(tensors(models["b"]), str(own), metadata={
        "format": "pt", "modelspec.title": "B's title", "sd_merge_recipe": json.dumps(recipe_b),
        "sd_merge_models": json.dumps({"old": {"name": "older.safetensors"}})})  # fmt: skip
    models = {**models, "own": own}
    params = CheckpointMergeParams("a", "own", multiplier=0.5, metadata_json='{"note": "hi"}')
    outcome = merge(tmp_path, models, params, **{A: "a", B: "own"})
    with safe_open(str(outcome.path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.title"] == "B's title" and metadata["note"] == "hi"
    recipe = json.loads(metadata["sd_merge_recipe"])
    assert recipe["type"] == "webui" and recipe["interp_method"] == "Weighted sum"
    assert recipe["primary_model_hash"] == "sha-a" and recipe["secondary_model_hash"] == "sha-own"
    assert recipe["multiplier"] == 0.5 and recipe["tertiary_model_hash"] is None
    merged_models = json.loads(metadata["sd_merge_models"])
    assert merged_models["sha-own"]["sd_merge_recipe"] == recipe_b
    assert merged_models["sha-a"]["name"] == "a.safetensors"
    assert len(merged_models["sha-a"]["legacy_hash"]) == 8
    assert merged_models["old"] == {"name": "older.safetensors"}  # nested merges kept
    plain = CheckpointMergeParams("a", "b", multiplier=0.5, save_metadata=False, custom_name="p")
    with safe_open(str(merge(tmp_path, models, plain, **{A: "a", B: "b"}).path), "pt") as f:
        assert "sd_merge_recipe" not in (f.metadata() or {})


def test_inpainting_a_with_plain_b_merges_the_shared_channels(tmp_path, models):
    params = CheckpointMergeParams("inpaint", "b", multiplier=0.5, custom_name="m")
    outcome = merge(tmp_path, models, params, **{A: "inpaint", B: "b"})
    assert outcome.path.name == "m.inpainting.safetensors" and outcome.inpainting
    key = "model.diffusion_model.input_blocks.0.0.weight"
    a, b, merged = tensors(models["inpaint"])[key], tensors(models["b"])[key], tensors(outcome.path)[key]  # fmt: skip
    assert merged.shape[1] == 9
    assert torch.equal(merged[:, :4], a[:, :4] * 0.5 + b * 0.5)
    assert torch.equal(merged[:, 4:], a[:, 4:])
    with pytest.raises(MergeError, match="A must be the inpainting model"):
        merge(tmp_path, models, CheckpointMergeParams("b", "inpaint", custom_name="n"),
              **{A: "b", B: "inpaint"})  # fmt: skip


def test_existing_file_is_kept_unless_overwrite_and_interrupt_writes_nothing(tmp_path, models):
    params = CheckpointMergeParams("a", "b", custom_name="same")
    first = merge(tmp_path, models, params, **{A: "a", B: "b"}).path
    stamp = first.stat().st_mtime_ns
    with pytest.raises(MergeError, match="already exists"):
        merge(tmp_path, models, params, **{A: "a", B: "b"})
    assert first.stat().st_mtime_ns == stamp
    again = CheckpointMergeParams("a", "b", custom_name="same", overwrite=True, multiplier=1.0)
    merge(tmp_path, models, again, **{A: "a", B: "b"})
    assert torch.equal(tensors(first)["model.diffusion_model.out.2.weight"],
                       tensors(models["b"])["model.diffusion_model.out.2.weight"])  # fmt: skip
    calls = []
    stopped = merge_checkpoints(
        CheckpointMergeParams("a", "b", custom_name="stopped"), inputs(models, **{A: "a", B: "b"}),
        first.parent, should_stop=lambda: calls.append(1) or len(calls) > 5,
    )  # fmt: skip
    assert stopped is None
    assert sorted(p.name for p in first.parent.iterdir()) == ["same.safetensors"]


def test_ckpt_format_is_a_loadable_pickle(tmp_path, models):
    params = CheckpointMergeParams("a", "b", checkpoint_format="ckpt", custom_name="old")
    outcome = merge(tmp_path, models, params, **{A: "a", B: "b"})
    assert outcome.path.name == "old.ckpt"
    state = torch.load(outcome.path, weights_only=True)
    a, b = tensors(models["a"]), tensors(models["b"])
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(state[key], a[key] * 0.7 + b[key] * 0.3)


@pytest.mark.parametrize(
    "fields, field",
    [({"multiplier": 1.5}, "multiplier"), ({"multiplier": float("nan")}, "multiplier"),
     ({"custom_name": "../evil"}, "custom_name"), ({"custom_name": "a/b"}, "custom_name"),
     ({"custom_name": "con"}, "custom_name"), ({"discard_weights": "(["}, "discard_weights"),
     ({"interp_method": "Magic"}, "interp_method"), ({"secondary_model_name": ""}, "secondary_model_name"),
     ({"metadata_json": "[1]"}, "metadata_json"), ({"checkpoint_format": "bin"}, "checkpoint_format")],
)  # fmt: skip
def test_bad_fields_are_named(fields, field):
    params = CheckpointMergeParams(**{"primary_model_name": "a", "secondary_model_name": "b", **fields})  # fmt: skip
    with pytest.raises(MergeInputError) as info:
        check_merge(params)
    assert info.value.field == field


def test_lora_list_parsing():
    assert parse_loras("one:0.5, two") == (("one", 0.5), ("two", 1.0))
    assert parse_loras("<lora:one:0.8> <lora:two:-1>") == (("one", 0.8), ("two", -1.0))
