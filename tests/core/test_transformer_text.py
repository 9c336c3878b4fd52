"""Clip skip and textual-inversion embeddings on FLUX.1 and Z-Image, as Forge does them:
FLUX's CLIP-L reads an embedding into its pooled vector (T5 reads the name as words),
clip skip changes no FLUX picture (FLUX reads no CLIP hidden layer), Qwen3 takes neither;
what was not applied is a warning of the job and the infotext claims neither."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from tests.tiny_networks import write_safetensors_embedding
from webui.context import build_context
from webui.core.families import FLUX1
from webui.core.families.zimage import ZIMAGE
from webui.core.flux_text import flux_conditioning
from webui.core.params import Txt2ImgParams
from webui.core.zimage_text import zimage_conditioning
from webui.imaging.infotext import parse_infotext
from webui.model_manager.embeddings import EmbeddingRegistry
from webui.model_manager.registry import HashCache
from webui.model_manager.tiny_flux import build_tiny_flux
from webui.settings import parse_flags

FIELDS = ("prompt", "negative_prompt")


@pytest.fixture(scope="module")
def flux():
    return build_tiny_flux(seed=0)


def _write_embeddings(folder, flux) -> None:
    """kittyemb: one vector, CLIP-L's own token vector of "cat" (so "a kittyemb" must
    pool exactly as "a cat"); xlemb: SDXL's clip_l/clip_g; wideemb: 48 wide, fits no
    CLIP-L here."""
    folder.mkdir(parents=True, exist_ok=True)
    (cat,) = flux.tokenizer("cat", add_special_tokens=False).input_ids
    vector = flux.text_encoder.get_input_embeddings().weight[cat].detach().clone()
    save_file({"emb_params": vector[None].contiguous()}, str(folder / "kittyemb.safetensors"))
    write_safetensors_embedding(folder / "xlemb.safetensors", sdxl_widths=(32, 64))
    write_safetensors_embedding(folder / "wideemb.safetensors", width=48)


@pytest.fixture
def embeddings(tmp_path, flux):
    _write_embeddings(tmp_path / "embeddings", flux)
    return EmbeddingRegistry(tmp_path / "embeddings", HashCache(tmp_path / "cache.json"))


def _flux(pipe, prompt, negative="", **kwargs):
    return flux_conditioning(pipe, prompt, negative, steps=1, fields=FIELDS, **kwargs)


def test_flux_clip_l_reads_an_embedding_where_its_name_is(flux, embeddings):
    used = _flux(flux, "a photo of kittyemb", embeddings=embeddings)
    same = _flux(flux, "a photo of cat")
    literal = _flux(flux, "a photo of kittyemb")  # no registry: the name read as words
    assert torch.equal(used.conds[0].at(0).pooled, same.conds[0].at(0).pooled)
    assert not torch.equal(literal.conds[0].at(0).pooled, same.conds[0].at(0).pooled)
    assert torch.equal(used.conds[0].at(0).embeds, literal.conds[0].at(0).embeds)  # T5: words
    assert list(used.used_embeddings) == ["kittyemb"]
    assert used.warnings == ["Embedding kittyemb: applied to CLIP-L only (T5 reads its name "
                             "as words)"]  # fmt: skip
    xl = _flux(flux, "xlemb style", "wideemb", embeddings=embeddings)
    assert list(xl.used_embeddings) == ["xlemb"]  # SDXL files give CLIP-L their clip_l
    assert "Embedding wideemb not applied: it has no CLIP-L (32-wide) vectors" in xl.warnings
    assert embeddings.model_widths == {"clip_l": 32}
    plain = _flux(flux, "a photo of a dog", embeddings=embeddings)  # no name: as before
    assert plain.warnings == [] and plain.used_embeddings == {}
    assert torch.equal(plain.conds[0].at(0).pooled, _flux(flux, "a photo of a dog").conds[0].at(0).pooled)  # fmt: skip


def test_flux_clip_skip_changes_nothing_and_says_so(flux):
    one, two = (_flux(flux, "a cat", clip_skip=n) for n in (1, 2))
    assert torch.equal(one.conds[0].at(0).embeds, two.conds[0].at(0).embeds)
    assert torch.equal(one.conds[0].at(0).pooled, two.conds[0].at(0).pooled)
    assert one.warnings == []
    assert two.warnings == ["Clip skip 2 not applied: FLUX reads only CLIP-L's pooled vector, "
                            "which clip skip does not change (as in Forge), and T5 takes none"]  # fmt: skip
    params = Txt2ImgParams(prompt="a cat", clip_skip=2).validated()
    assert "Clip skip" not in FLUX1.infotext_fields(params)


def test_z_image_takes_no_clip_skip_nor_embedding_and_says_so(zimage_files, embeddings):
    pipe = zimage_files["pipe"]
    plain = zimage_conditioning(pipe, "a photo of kittyemb", "", steps=1, fields=FIELDS)
    asked = zimage_conditioning(pipe, "a photo of kittyemb", "", steps=1, fields=FIELDS,
                                clip_skip=3, embeddings=embeddings)  # fmt: skip
    assert torch.equal(asked.conds[0].at(0).embeds, plain.conds[0].at(0).embeds)
    assert asked.used_embeddings == {} and plain.warnings == []
    assert asked.warnings == [
        "Clip skip 3 not applied: Z-Image's Qwen3 text encoder takes none (it has no CLIP "
        "layers to skip)",
        "Embedding kittyemb not applied: Z-Image's Qwen3 text encoder takes no "
        "textual-inversion embeddings (it reads the name as words)",
    ]
    params = Txt2ImgParams(prompt="a cat", clip_skip=3).validated()
    assert "Clip skip" not in ZIMAGE.infotext_fields(params)
    named = zimage_conditioning(pipe, "a kittyembroidery", "", steps=1, fields=FIELDS,
                                embeddings=embeddings)  # fmt: skip
    assert named.warnings == []  # a longer word is not the embedding's name


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, zimage_files, flux):
    data = tmp_path_factory.mktemp("zimage-text-data")
    shutil.copytree(zimage_files["diffusers"], data / "models" / "Stable-diffusion" / "z-image")
    _write_embeddings(data / "models" / "embeddings", flux)
    context = build_context(parse_flags(["--data-dir", str(data), "--no-download-sd-model"]))
    yield context
    context.close()


def test_a_z_image_job_warns_and_its_infotext_claims_neither(ctx):
    params = Txt2ImgParams(prompt="a photo of kittyemb", steps=1, width=64, height=64, seed=7,
                           cfg_scale=1, clip_skip=2, sampler_name="Euler",
                           save_images=False).validated()  # fmt: skip
    job = ctx.jobs.submit("txt2img", params, owner="test")
    assert job.done.wait(300), "job did not finish"
    assert job.state == "done", job.error
    warnings = job.result.warnings
    assert any(w.startswith("Clip skip 2 not applied") for w in warnings), warnings
    assert any(w.startswith("Embedding kittyemb not applied") for w in warnings), warnings
    infotext = job.result.images[0].infotext  # (PNG Info would fill in Clip skip 1)
    assert "Clip skip" not in infotext and "TI hashes" not in infotext
    assert parse_infotext(infotext)["Prompt"] == "a photo of kittyemb"
