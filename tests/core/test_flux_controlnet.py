"""FLUX ControlNet units (core/flux_controlnet.py, model_manager/flux_controlnet.py) through
the generation service as the extension's API clients send them: the tiny FLUX.1
all-in-one checkpoint and tiny FluxControlNetModels (a diffusers single file, a union
model, a diffusers folder; an XLabs file for the loader) and a tiny FLUX IP-Adapter in
XLabs' layout with a tiny CLIP vision model, 64x64 images, a few steps."""

from __future__ import annotations

import shutil
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.control_jobs import calls_seen, img2img_and_hires, pixels, run, shapes, submit
from tests.tiny_clip_vision import PROJECTION, save_tiny_clip_vision
from webui.context import build_context
from webui.core.flux_controlnet import union_mode
from webui.model_manager.controlnet_files import fits, list_controlnets
from webui.model_manager.controlnet_loader import ControlNetLoadError, load_control_model
from webui.model_manager.flux_controlnet import load_flux_controlnet
from webui.model_manager.sniff import sniff_file
from webui.model_manager.tiny_controlnet import save_tiny_controlnet
from webui.model_manager.tiny_flux_controlnet import (
    build_tiny_flux_controlnet,
    save_tiny_flux_controlnet,
    save_tiny_flux_ip_adapter,
)
from webui.services.controlnet import model_choices
from webui.services.errors import RequestError
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def flux(tmp_path_factory, flux_files):
    data = tmp_path_factory.mktemp("flux-controlnet")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(flux_files["all-in-one"], data / "models" / "Stable-diffusion")
    folder = data / "models" / "ControlNet"
    save_tiny_flux_controlnet(folder / "flux-tiny-canny.safetensors", seed=1)
    save_tiny_flux_controlnet(folder / "flux-tiny-union.safetensors", seed=2, union=True)
    save_tiny_flux_controlnet(folder / "flux-tiny-folder", seed=3, layout="folder")
    save_tiny_flux_controlnet(folder / "flux-tiny-xlabs.safetensors", seed=4, layout="xlabs")
    save_tiny_controlnet(folder / "control_tiny_sd15.safetensors", "sd1", seed=1)
    save_tiny_flux_ip_adapter(folder / "flux-ip-adapter.safetensors", PROJECTION, seed=5)
    clip = save_tiny_clip_vision(tmp_path_factory.mktemp("clip"))["file"]
    (data / "models" / "clip_vision").mkdir(parents=True)
    clip.rename(data / "models" / "clip_vision" / "clip_vision_l.safetensors")
    ctx = build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))
    ctx.folder, ctx.checkpoint = folder, flux_files["all-in-one"].stem
    yield ctx
    ctx.close()


def unit(**fields) -> dict:
    return {"enabled": True, "module": "canny", "image": shapes(), "model": "flux-tiny-canny",
            "save_detected_map": False, **fields}  # fmt: skip


@pytest.fixture(scope="module")
def plain(flux) -> np.ndarray:
    return pixels(run(flux, None))


def calls_guided(flux, units: list, **changes) -> tuple[np.ndarray, list[bool]]:
    """The image, and for each transformer call whether it got ControlNet residuals."""
    return calls_seen(flux, units, lambda kwargs: kwargs.get("controlnet_block_samples")
                      is not None, **changes)  # fmt: skip


def test_files_are_family_flux_and_listed_for_flux_checkpoints_only(flux):
    models = {m.name: m for m in list_controlnets(flux.folder).values()}
    for name in ("flux-tiny-canny", "flux-tiny-union", "flux-tiny-folder", "flux-tiny-xlabs"):
        assert models[name].kind == "flux-controlnet" and models[name].family == "FLUX", name
    sd15 = models["control_tiny_sd15"]
    assert sd15.family == ""  # the tiny UNet's width is no family's: listed for all
    flux_names = {m.label for m in models.values() if m.family == "FLUX"}
    assert set(model_choices(flux.folder, "All", "FLUX")) == {"None", sd15.label, *flux_names}
    assert model_choices(flux.folder, "All", "SD 1.x") == ["None", sd15.label]
    real = replace(sd15, context_width=768)  # control_v11p_sd15_canny's cross-attention width
    assert fits(real, "SD 1.x") and not fits(real, "FLUX")
    xlabs = flux.folder / "flux-tiny-xlabs.safetensors"  # BFL block names: not a checkpoint
    assert (sniff_file(xlabs).kind, sniff_file(xlabs).family) == ("controlnet", "FLUX")


@pytest.fixture(scope="module")
def guided(flux, plain) -> tuple[np.ndarray, list[bool]]:
    return calls_guided(flux, [unit()])


@pytest.fixture(scope="module")
def guided_cfg(flux, plain) -> tuple[np.ndarray, list[bool]]:
    """A unit with true CFG (2 steps): the prompt's and the negative prompt's calls."""
    return calls_guided(flux, [unit()], cfg_scale=2.0, steps=2)


def test_a_unit_guides_its_steps_and_weight_zero_is_no_unit(flux, plain, guided):
    full, seen = guided
    assert np.abs(full - plain).mean() > 1 and seen == [True] * 4
    half, seen = calls_guided(flux, [unit(guidance_end=0.5)])
    assert seen == [True, True, True, False]  # step/steps 0, 0.25, 0.5 guided; 0.75 not
    assert not np.array_equal(half, full) and not np.array_equal(half, plain)
    zero, seen = calls_guided(flux, [unit(weight=0)])
    assert np.array_equal(zero, plain) and seen == [False] * 4
    folder = pixels(run(flux, [unit(model="flux-tiny-folder")]))
    assert np.abs(folder - plain).mean() > 1 and not np.array_equal(folder, full)


def test_two_units_and_controlnet_is_more_important_with_true_cfg(flux, guided, guided_cfg):
    both = pixels(run(flux, [unit(), unit(model="flux-tiny-folder", module="invert")]))
    assert not np.array_equal(both, guided[0])
    _, seen = calls_guided(flux, [unit(control_mode="ControlNet is more important")],
                           cfg_scale=2.0, steps=2)  # fmt: skip
    assert seen == [True, False, True, False]  # prompt call guided, negative call not
    assert guided_cfg[1] == [True] * 4


def test_img2img_and_hires_fix_run_the_units(flux):
    """img2img: a unit without an image uses the init image; hires. fix: the second pass at
    its own size gets its own hint (both passes guided)."""
    seen = img2img_and_hires(flux, unit, calls_guided)
    assert all(seen)


@pytest.mark.parametrize(("module", "mode"), [
    ("canny", 0), ("lineart_standard", 0), ("scribble_xdog", 0), ("tile_resample", 1),
    ("depth_anything", 2), ("blur_gaussian", 3), ("openpose_full", 4), ("dw_openpose_full", 4),
])  # fmt: skip
def test_union_modes_of_the_control_types(module, mode):
    part = SimpleNamespace(unit=SimpleNamespace(module=module, model_label="u"), index=0)
    assert union_mode(part) == mode


def test_a_union_model_runs_with_the_mode_of_its_preprocessor(flux, plain):
    canny = pixels(run(flux, [unit(model="flux-tiny-union")]))
    assert np.abs(canny - plain).mean() > 1
    job = run(flux, [unit(model="flux-tiny-union", module="none")])
    assert job.state == "failed" and "union" in str(job.error)


def test_refused_units(flux):
    with pytest.raises(RequestError) as found:  # no FLUX meaning: a 422 before queuing
        submit(flux, [unit(control_mode="My prompt is more important")])
    assert found.value.loc[-1] == "control_mode"
    job = run(flux, [unit(model="control_tiny_sd15")])  # an SD 1.5 ControlNet on FLUX.1
    assert job.state == "failed" and "SD/SDXL" in str(job.error)
    with pytest.raises(ControlNetLoadError, match="is a FLUX model"):  # and on an SD UNet
        load_control_model(
            flux.folder / "flux-tiny-canny.safetensors", {"block_out_channels": [32]}
        )


def ip_unit(**fields) -> dict:
    return unit(module="ip-adapter_clip_flux", model="flux-ip-adapter", **fields)


def test_a_flux_ip_adapter_unit(flux, plain, guided_cfg):
    assert model_choices(flux.folder, "IP-Adapter", "FLUX") == [
        "None",
        next(m for m in list_controlnets(flux.folder) if "ip-adapter" in m),
    ]
    full = pixels(run(flux, [ip_unit()]))
    assert np.abs(full - plain).mean() > 1
    half = pixels(run(flux, [ip_unit(guidance_end=0.5)]))
    assert not np.array_equal(half, full) and not np.array_equal(half, plain)
    assert np.array_equal(pixels(run(flux, [ip_unit(weight=0)])), plain)
    both = pixels(run(flux, [ip_unit(), unit()], cfg_scale=2.0, steps=2))  # and a ControlNet
    assert not np.array_equal(both, guided_cfg[0])
    (model,) = flux.models._loaded.values()
    assert not any("IPAdapter" in type(p).__name__
                   for p in model.pipe.transformer.attn_processors.values())  # fmt: skip


def test_a_missing_clip_vision_model_is_a_422_naming_it(flux):
    clip = flux.folder.parent / "clip_vision" / "clip_vision_l.safetensors"
    clip.rename(clip.with_suffix(".moved"))
    try:
        with pytest.raises(RequestError) as found:
            submit(flux, [ip_unit()])
    finally:
        clip.with_suffix(".moved").rename(clip)
    assert found.value.loc[-1] == "module"
    assert "clip_vision_l.safetensors" in found.value.message
    assert str(clip.parent) in found.value.message


def test_xlabs_files_load_as_the_model_they_were_written_from(tmp_path):
    path = save_tiny_flux_controlnet(tmp_path / "flux-canny-controlnet-v3.safetensors", seed=4,
                                     layout="xlabs")  # fmt: skip
    original = build_tiny_flux_controlnet(4, xlabs=True)
    loaded = load_flux_controlnet(path)
    assert loaded.config.patch_size == 2 and loaded.input_hint_block is not None
    for name in (
        "num_layers",
        "num_single_layers",
        "attention_head_dim",
        "num_attention_heads",
        "joint_attention_dim",
        "guidance_embeds",
        "conditioning_embedding_channels",
    ):
        assert loaded.config[name] == original.config[name], name  # fmt: skip
    assert list(loaded.config.axes_dims_rope) == list(original.config.axes_dims_rope)
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
