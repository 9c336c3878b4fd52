"""A job's saving options, its batch grid and the live preview method (issue 17).

The grid of a job with more than one image is A1111's: saved to <kind>-grids with the
first image's infotext when grid_save is on, shown first when return_grid is on; each
option comes from the job's own options. "Full" live previews are decoded by the VAE.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageChops

from webui.core.decode import decode_latents
from webui.core.families.sd import SD_LATENT_RGB
from webui.core.jobs import Progress
from webui.core.params import Txt2ImgParams
from webui.core.processing import latent_preview, step_callback
from webui.core.run import MemoryRun
from webui.core.saving import SaveSettings
from webui.imaging.infotext import parse_infotext, read_infotext_from_image
from webui.model_manager.tiny import build_tiny_pipeline
from webui.options import Options

WAIT = 300


def test_save_settings_come_from_the_options() -> None:
    options = Options()
    defaults = SaveSettings.from_options(options.get)
    assert (defaults.folder_pattern, defaults.grid_folder_pattern, defaults.quality) == (
        "[date]", "[date]", 80)  # fmt: skip
    assert defaults.filename_pattern is None and defaults.add_number and defaults.grid_save
    options.update({"save_to_dirs": False, "directories_filename_pattern": "[model_name]",
                    "jpeg_quality": 33, "webp_lossless": True, "grid_format": "webp",
                    "samples_filename_pattern": "[seed]-[steps]", "n_rows": 2})  # fmt: skip
    got = SaveSettings.from_options(options.get)
    assert (got.folder_pattern, got.grid_folder_pattern) == ("", "[model_name]")
    assert got.image_args()["quality"] == 33 and got.image_args()["lossless"] is True
    assert got.grid_args() == {"fmt": "webp", "folder_pattern": "[model_name]",
                               "quality": 33, "lossless": True}  # fmt: skip
    assert got.image_args()["filename_pattern"] == "[seed]-[steps]" and got.n_rows == 2


def _run(pipe, *, full: bool) -> SimpleNamespace:
    progress = Progress()
    return SimpleNamespace(progress=progress, preview_every=1, preview_full=full,
                           preview_method="Full" if full else "Approx cheap",
                           memory=MemoryRun(), family=SimpleNamespace(latent_rgb=SD_LATENT_RGB),
                           should_stop=lambda: False)  # fmt: skip


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline("sd1")
    pipe._num_timesteps = 4
    return pipe


def test_full_live_preview_is_the_vae_decode(pipe) -> None:
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    previews = {}
    for full in (False, True):
        run = _run(pipe, full=full)
        step_callback(run)(pipe, 0, 999, {"latents": latents})
        previews[full] = run.progress.preview
        assert run.progress.preview_step == 1
        assert run.memory.notes == {}  # nothing of a preview reaches the infotext
    expected_full = decode_latents(pipe, latents[:1])[0]
    side = 8 * pipe.vae_scale_factor  # the tiny VAE's factor is not SD's 8
    assert previews[True].size == expected_full.size == (side, side)
    assert ImageChops.difference(previews[True], expected_full).getbbox() is None
    cheap = latent_preview(latents, SD_LATENT_RGB)
    assert ImageChops.difference(previews[False], cheap).getbbox() is None
    assert ImageChops.difference(previews[True], cheap).getbbox() is not None


def test_a_failing_full_preview_shows_the_cheap_one(pipe) -> None:
    latents = torch.full((1, 4, 8, 8), float("nan"))
    run = _run(pipe, full=True)
    step_callback(run)(pipe, 0, 999, {"latents": latents})  # no exception: the job goes on
    assert isinstance(run.progress.preview, Image.Image)
    assert run.progress.preview.size == (64, 64)  # the cheap one: 8x the latent


# --- the batch grid through the worker ----------------------------------------------------


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_files):
    from webui.context import build_context
    from webui.settings import parse_flags

    data = tmp_path_factory.mktemp("saving")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    (data / "models" / "Stable-diffusion" / "tiny.safetensors").symlink_to(tiny_files["sd1"])
    context = build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))
    yield context
    context.close()


def _job(ctx, options: dict | None = None, **params):
    base = {"prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "seed": 5,
            "batch_size": 2}  # fmt: skip
    p = Txt2ImgParams(**(base | params)).validated()
    job = ctx.jobs.submit("txt2img", p, owner="test", options=options or {})
    assert job.done.wait(WAIT) and job.state == "done", job.error
    return job


def test_a_batch_saves_its_grid_and_shows_it_first(ctx) -> None:
    job = _job(ctx, {"n_rows": 2})
    grid, *images = job.result.images
    assert [g.grid for g in job.result.images] == [True, False, False]
    path = Path(grid.path)
    assert path.parent.parent.name == "txt2img-grids" and path.name == "grid-0000.png"
    assert grid.image.size == (64, 128)  # n_rows 2 from the job's options: one column
    with Image.open(path) as saved:
        assert saved.size == (64, 128)
        assert parse_infotext(read_infotext_from_image(saved))["Seed"] == 5
    assert grid.infotext == images[0].infotext and grid.seed == images[0].seed == 5
    assert path.as_posix() in job.saved


def test_grid_options_of_the_job(ctx) -> None:
    # not saved, still shown; another format; no grid for one picture; no grid asked
    job = _job(ctx, {"grid_save": False})
    assert job.result.images[0].grid and job.result.images[0].path is None
    job = _job(ctx, {"return_grid": False, "grid_format": "jpg", "grid_save_to_dirs": False})
    assert not any(g.grid for g in job.result.images) and len(job.result.images) == 2
    grid_path = Path(job.saved[-1])
    assert grid_path.suffix == ".jpg" and grid_path.parent.name == "txt2img-grids"
    assert [g.grid for g in _job(ctx, batch_size=1).result.images] == [False]
    assert [g.grid for g in _job(ctx, {"grid_only_if_multiple": False},
                                 batch_size=1).result.images] == [True, False]  # fmt: skip
    assert [g.grid for g in _job(ctx, grid=False).result.images] == [False, False]


def test_images_follow_the_saving_options_of_the_job(ctx) -> None:
    options = {
        "samples_format": "webp",
        "webp_lossless": True,
        "save_to_dirs": False,
        "samples_filename_pattern": "[seed]-[steps]-[sampler]",
        "save_images_add_number": False,
        "return_grid": False,
        "grid_save": False,
    }
    job = _job(ctx, options, batch_size=1)  # fmt: skip
    path = Path(job.result.images[0].path)
    assert path.name == "5-2-DPM++ 2M.webp" and path.parent.name == "txt2img-images"
    with Image.open(path) as saved:
        assert saved.convert("RGB").tobytes() == job.result.images[0].image.tobytes()


@pytest.mark.parametrize(("method", "side"), [("Full", 64), ("Approx cheap", 256)])
def test_the_preview_method_of_the_job(ctx, method: str, side: int) -> None:
    # a 64 px image is 32 latents with the tiny VAE: decoded 64 px, cheap 8 x 32 = 256 px
    job = _job(ctx, {"show_progress_type": method, "show_progress_every_n_steps": 1,
                     "grid_save": False}, batch_size=1, steps=3)  # fmt: skip
    assert job.progress.preview is not None and job.progress.preview.size == (side, side)
    assert "preview" not in job.result.images[0].infotext.lower()
