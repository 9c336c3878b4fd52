"""SD 3.5 ControlNet units (core/sd3_controlnet.py, model_manager/sd3_controlnet.py) through
the generation service as the extension's API clients send them: a tiny SD 3.5 Large
all-in-one checkpoint and tiny SD3ControlNetModels in the layouts users have (InstantX's
diffusers single file, a diffusers folder, Stability's file), 64x64 images, a few steps."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tests.control_jobs import calls_seen, img2img_and_hires, pixels, run, shapes, submit
from webui.context import build_context
from webui.model_manager import tiny_sd3
from webui.model_manager.controlnet_files import list_controlnets
from webui.model_manager.controlnet_loader import ControlNetLoadError, load_control_model
from webui.model_manager.sd3_controlnet import load_sd3_controlnet
from webui.model_manager.sniff import sniff_file
from webui.model_manager.tiny_controlnet import save_tiny_controlnet
from webui.model_manager.tiny_flux_controlnet import save_tiny_flux_controlnet
from webui.model_manager.tiny_sd3_controlnet import (
    build_tiny_sd3_controlnet,
    save_tiny_sd3_controlnet,
)
from webui.services.controlnet import model_choices
from webui.services.errors import RequestError
from webui.settings import parse_flags

CHECKPOINT = "sd3.5-tiny-large"
SD3_MODELS = ("sd3.5_tiny_controlnet_canny", "sd3-tiny-instantx-canny", "sd3-tiny-folder")


@pytest.fixture(scope="module")
def sd3(tmp_path_factory) -> Iterator:
    data = tmp_path_factory.mktemp("sd3-controlnet")
    models = data / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    pipe = tiny_sd3.build_tiny_sd3(seed=3, positions=32)  # Large's layout, up to 128x128
    tiny_sd3.save_all_in_one(pipe, models / f"{CHECKPOINT}.safetensors", dtype=torch.float32)
    folder = data / "models" / "ControlNet"
    save_tiny_sd3_controlnet(folder / "sd3.5_tiny_controlnet_canny.safetensors", 1, "stability")
    save_tiny_sd3_controlnet(folder / "sd3-tiny-instantx-canny.safetensors", 2)
    save_tiny_sd3_controlnet(folder / "sd3-tiny-folder", 3, layout="folder")
    save_tiny_flux_controlnet(folder / "flux-tiny-canny.safetensors", seed=1)
    save_tiny_controlnet(folder / "control_tiny_sd15.safetensors", "sd1", seed=1)
    ctx = build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))
    ctx.folder, ctx.checkpoint = folder, CHECKPOINT
    ctx.checkpoint_path = models / f"{CHECKPOINT}.safetensors"
    yield ctx
    ctx.close()


def unit(**fields) -> dict:
    return {"enabled": True, "module": "canny", "image": shapes(),
            "model": "sd3.5_tiny_controlnet_canny", "save_detected_map": False, **fields}  # fmt: skip


@pytest.fixture(scope="module")
def plain(sd3) -> np.ndarray:
    return pixels(run(sd3, None))


def guided_rows(kwargs: dict) -> list[bool]:
    """Which rows of a transformer call got ControlNet residuals."""
    found = kwargs.get("block_controlnet_hidden_states")
    rows = range(kwargs["hidden_states"].shape[0])
    return [found is not None and bool(found[0][r].abs().sum() > 0) for r in rows]


def calls_guided(sd3, units: list, **changes) -> tuple[np.ndarray, list[list[bool]]]:
    """The image, and for each transformer call which of its rows got residuals."""
    return calls_seen(sd3, units, guided_rows, **changes)


def test_files_are_family_sd3_and_listed_for_sd3_checkpoints_only(sd3):
    models = {m.name: m for m in list_controlnets(sd3.folder).values()}
    for name in SD3_MODELS:
        assert models[name].kind == "sd3-controlnet" and models[name].family == "SD 3", name
    assert sniff_file(sd3.checkpoint_path).family == "SD 3"
    sd15 = models["control_tiny_sd15"]  # the tiny UNet's width is no family's: listed for all
    sd3_labels = {models[name].label for name in SD3_MODELS}
    assert set(model_choices(sd3.folder, "All", "SD 3")) == {"None", sd15.label, *sd3_labels}
    assert set(model_choices(sd3.folder, "Canny", "SD 3")) == {
        "None", models["sd3.5_tiny_controlnet_canny"].label,
        models["sd3-tiny-instantx-canny"].label,
    }  # fmt: skip
    assert not sd3_labels & set(model_choices(sd3.folder, "All", "FLUX"))
    stability = sd3.folder / "sd3.5_tiny_controlnet_canny.safetensors"
    assert (sniff_file(stability).kind, sniff_file(stability).family) == ("controlnet", "SD 3")


@pytest.mark.parametrize("layout", ["stability", "diffusers", "folder"])
def test_each_layout_loads_as_the_model_it_was_written_from(tmp_path, layout):
    name = "cn" if layout == "folder" else "cn.safetensors"
    path = save_tiny_sd3_controlnet(tmp_path / name, seed=4, layout=layout)
    loaded = load_sd3_controlnet(path, {"attention_head_dim": tiny_sd3.HEAD_DIM})
    original = build_tiny_sd3_controlnet(4, stability=layout == "stability")

    def plain(value):  # a folder's config.json gives lists for tuples
        return tuple(value) if isinstance(value, list | tuple) else value

    for key, value in original.config.items():
        if not key.startswith("_") and key != "sample_size":  # only the unpersisted positions'
            assert plain(loaded.config[key]) == plain(value), key
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in original.state_dict().items())


@pytest.fixture(scope="module")
def guided(sd3, plain) -> tuple[np.ndarray, list]:
    return calls_guided(sd3, [unit()])


def test_a_unit_guides_its_steps_and_weight_zero_is_no_unit(sd3, plain, guided):
    full, seen = guided
    assert np.abs(full - plain).mean() > 1 and seen == [[True]] * 4
    half, seen = calls_guided(sd3, [unit(guidance_end=0.5)])
    assert seen == [[True], [True], [True], [False]]  # step/steps 0, .25, .5 guided; .75 not
    assert not np.array_equal(half, full) and not np.array_equal(half, plain)
    zero, seen = calls_guided(sd3, [unit(weight=0)])
    assert np.array_equal(zero, plain) and seen == [[False]] * 4


@pytest.mark.parametrize("model", ["sd3-tiny-instantx-canny", "sd3-tiny-folder"])
def test_instantx_files_and_folders_guide(sd3, plain, guided, model):
    image = pixels(run(sd3, [unit(model=model)]))
    assert np.abs(image - plain).mean() > 1 and not np.array_equal(image, guided[0])


def test_two_units_sum_and_controlnet_is_more_important_with_cfg(sd3, guided):
    both = pixels(run(sd3, [unit(), unit(model="sd3-tiny-folder", module="invert")]))
    assert not np.array_equal(both, guided[0])
    _, seen = calls_guided(sd3, [unit()], cfg_scale=2.0, steps=2)
    assert seen == [[True, True]] * 2  # the negative rows first, then the prompt's
    mode = "ControlNet is more important"
    _, seen = calls_guided(sd3, [unit(control_mode=mode)], cfg_scale=2.0, steps=2)
    assert seen == [[False, True]] * 2


def test_img2img_and_hires_fix_run_the_units(sd3):
    """img2img: a unit without an image uses the init image; hires. fix: the second pass at
    its own size gets its own hint (both passes guided)."""
    seen = img2img_and_hires(sd3, unit, calls_guided)
    assert all(all(rows) for rows in seen)


def test_refused_units(sd3):
    with pytest.raises(RequestError) as found:  # no SD 3.5 meaning: a 422 before queuing
        submit(sd3, [unit(control_mode="My prompt is more important")])
    assert found.value.loc[-1] == "control_mode"
    job = run(sd3, [unit(model="control_tiny_sd15")])  # an SD 1.5 ControlNet on SD 3.5
    assert job.state == "failed" and "SD/SDXL" in str(job.error)
    job = run(sd3, [unit(model="flux-tiny-canny")])  # a FLUX ControlNet on SD 3.5
    assert job.state == "failed" and "FLUX" in str(job.error)
    with pytest.raises(ControlNetLoadError, match="is an SD 3.5 model"):  # and on an SD UNet
        load_control_model(
            sd3.folder / "sd3-tiny-instantx-canny.safetensors", {"block_out_channels": [32]}
        )


def test_skip_layer_guidance_runs_with_a_unit(sd3):
    """SLG's extra call of the prompt's rows gets the residuals too (it differs from the
    prompt's call by its skipped layers only)."""
    slg = {"cfg_scale": 2.0, "steps": 2, "skip_layer_guidance_scale": 2.0,
           "skip_guidance_layers": (0,), "skip_layer_guidance_start": 0.0,
           "skip_layer_guidance_stop": 1.0}  # fmt: skip
    plain = pixels(run(sd3, None, **slg))
    image, seen = calls_guided(sd3, [unit()], **slg)
    assert np.abs(image - plain).mean() > 1
    assert [True] in seen and [True, True] in seen  # the SLG call (1 row) and the CFG call
