"""Live preview methods (Full, Approx NN, Approx cheap, TAESD) and the TAESD final decode.

The small decoders are tiny models written in the files users have (`tests/tiny_approx.py`):
madebyollin's decoder-only TAESD layout and A1111's Approx NN `model.pt`.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageChops

from tests.tiny_approx import save_taesd_files, save_vae_approx
from webui.core.decode import decode_latents
from webui.core.families import default_families
from webui.core.jobs import Progress
from webui.core.previews import PREVIEW_METHODS, draft_decoder, to_image
from webui.core.processing import latent_preview, step_callback
from webui.core.run import MemoryRun
from webui.model_manager.approx_files import approx_folders
from webui.model_manager.tiny import build_tiny_pipeline
from webui.model_manager.vae_approx import ApproxFileMissing, ApproxModels
from webui.option_defs import OPTION_DEFS

SD1 = default_families().get("sd1")
LATENTS = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline("sd1")
    pipe._num_timesteps = 4
    return pipe


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """models/ with a tiny taesd_decoder.safetensors + taesd_encoder.pth and model.pt."""
    root = tmp_path_factory.mktemp("approx-models")
    folder = approx_folders(root)[0]
    taesd = save_taesd_files(folder, "taesd", seed=1)
    approx_nn = save_vae_approx(folder, "model.pt", seed=2)
    return SimpleNamespace(root=root, taesd=taesd, approx_nn=approx_nn)


def _preview(pipe, method: str, approx) -> tuple:
    run = SimpleNamespace(progress=Progress(), preview_every=1, preview_full=method == "Full",
                          preview_method=method, approx=approx, memory=MemoryRun(), family=SD1,
                          warnings=[], should_stop=lambda: False)  # fmt: skip
    step_callback(run)(pipe, 0, 999, {"latents": LATENTS})
    return run.progress.preview, run


def test_options_offer_a1111s_methods() -> None:
    defs = {d.key: d for d in OPTION_DEFS}
    assert defs["show_progress_type"].choices == PREVIEW_METHODS
    assert PREVIEW_METHODS == ("Full", "Approx NN", "Approx cheap", "TAESD")
    assert defs["sd_vae_decode_method"].choices == ("Full", "TAESD")
    assert defs["sd_vae_decode_method"].default == "Full"


def test_madebyollins_decoder_file_is_the_diffusers_model(models_dir) -> None:
    """The decoder-only file (keys shifted by the clamp) and the encoder file load onto
    AutoencoderTiny: the same decode and encode as the model they were written from."""
    approx = ApproxModels(approx_folders(models_dir.root))
    loaded = approx.taesd("taesd", torch.device("cpu"), torch.float32, encoder=True)
    with torch.no_grad():
        expected = models_dir.taesd.decode(LATENTS).sample
        assert torch.allclose(loaded.decode(LATENTS).sample, expected, atol=1e-6)
        pixels = expected.clamp(-1, 1)
        assert torch.allclose(loaded.encode(pixels).latents, models_dir.taesd.encode(pixels).latents,
                              atol=1e-6)  # fmt: skip
    assert approx.taesd("taesd", torch.device("cpu"), torch.float32) is approx.taesd(
        "taesd", torch.device("cpu"), torch.float32)  # loaded once  # fmt: skip


def test_each_preview_method_draws_its_own_picture(pipe, models_dir) -> None:
    approx = ApproxModels(approx_folders(models_dir.root))
    cheap = latent_preview(LATENTS, SD1.latent_rgb)
    side = 32 * pipe.vae_scale_factor  # the image's size (the tiny VAE's factor is 2)
    previews = {m: _preview(pipe, m, approx)[0] for m in PREVIEW_METHODS}
    assert ImageChops.difference(previews["Approx cheap"], cheap).getbbox() is None
    for method in ("Full", "Approx NN", "TAESD"):
        assert previews[method].size == (side, side), method
        small = previews[method].resize(cheap.size)
        assert ImageChops.difference(small, cheap).getbbox() is not None, method
    with torch.no_grad():  # TAESD's preview is the TAESD decode of the batch's first latent
        taesd = to_image(models_dir.taesd.decode(LATENTS[:1]).sample[0].clamp(-1, 1))
        approx_nn = to_image(models_dir.approx_nn(LATENTS[:1])[0])
    assert approx_nn.size == (64, 64)  # A1111's net: 2x the latents
    expected = taesd.resize((side, side), Image.Resampling.BILINEAR)  # as the preview
    assert np.abs(np.asarray(previews["TAESD"], int) - np.asarray(expected, int)).max() <= 1
    assert ImageChops.difference(previews["Approx NN"], approx_nn).getbbox() is None


def test_a_missing_file_falls_back_to_approx_cheap_and_says_where(pipe, tmp_path, caplog) -> None:
    approx = ApproxModels(approx_folders(tmp_path))
    cheap = latent_preview(LATENTS, SD1.latent_rgb)
    with caplog.at_level(logging.WARNING, logger="webui.core.previews"):
        for method, file in (("TAESD", "taesd_decoder.safetensors"), ("Approx NN", "model.pt")):
            for _ in range(2):  # a preview every step: one log line, one job warning
                preview, run = _preview(pipe, method, approx)
                assert ImageChops.difference(preview, cheap).getbbox() is None
                assert len(run.warnings) == 1
                assert file in run.warnings[0] and str(tmp_path / "VAE-approx") in run.warnings[0]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "taesd_decoder" in lines[0] and "model.pt" in lines[1], lines


def test_taesd_final_decode_is_a_draft_with_its_infotext(pipe, models_dir, tmp_path) -> None:
    approx = ApproxModels(approx_folders(models_dir.root))
    tiny = draft_decoder("TAESD", SD1, approx, "cpu", torch.float32)
    assert draft_decoder("Full", SD1, approx, "cpu", torch.float32) is None
    memory = MemoryRun(draft_vae=tiny)
    drafts = decode_latents(pipe, LATENTS, memory)
    full = decode_latents(pipe, LATENTS, MemoryRun())
    assert memory.notes == {"VAE Decoder": "TAESD"}
    assert [d.size for d in drafts] == [f.size for f in full] == [(64, 64)] * 2
    assert ImageChops.difference(drafts[0], full[0]).getbbox() is not None
    assert memory.lower().draft_vae is tiny  # the low-memory retry decodes the same way
    with pytest.raises(ApproxFileMissing, match="taesd_decoder.safetensors"):
        draft_decoder("TAESD", SD1, ApproxModels(approx_folders(tmp_path)), "cpu", torch.float32)
