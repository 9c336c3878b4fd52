"""Textual inversion and VAE selection, on the tiny models and through the job queue."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.tiny_networks import (
    write_a1111_embedding,
    write_ldm_vae,
    write_safetensors_embedding,
)
from webui.context import build_context
from webui.core.conditioning import PromptEncoder, _token_embedding_fixes, encode_prompts
from webui.core.families import SD1, SDXL
from webui.core.params import Txt2ImgParams
from webui.imaging.infotext import parse_infotext
from webui.model_manager.embeddings import EmbeddingRegistry
from webui.model_manager.network_files import NetworkFileError
from webui.model_manager.registry import HashCache
from webui.model_manager.tiny import build_tiny_pipeline
from webui.model_manager.vae import VaeRegistry
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def sd1():
    pipe = build_tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def embeddings(tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    write_a1111_embedding(folder / "myemb.pt", vectors=2)
    write_safetensors_embedding(folder / "stemb.safetensors")
    write_safetensors_embedding(folder / "xlemb.safetensors", sdxl_widths=(32, 64))
    return EmbeddingRegistry(folder, HashCache(tmp_path / "cache.json"))


def test_embedding_changes_the_conditioning_only_when_named(sd1, embeddings):
    plain = encode_prompts(sd1, SD1, "a photo of myemb", "", 1)["prompt_embeds"]
    encoder = PromptEncoder(sd1, SD1, 1, embeddings)
    with_emb = encoder.encode("a photo of myemb").embeds
    assert not torch.equal(with_emb, plain)
    assert list(encoder.used_embeddings) == ["myemb"]
    (chunk,) = encoder.chunks("a photo of (myemb:1.2)")
    assert [offset for offset, _ in chunk.fixes] == [3]  # after "a photo of"
    assert chunk.tokens[3:5] == [0, 0] and chunk.multipliers[3:5] == [1.2, 1.2]
    # a prompt without the name: exactly the plain encoding, no embedding used
    other = PromptEncoder(sd1, SD1, 1, embeddings)
    assert torch.equal(other.encode("a photo of a cat").embeds,
                       encode_prompts(sd1, SD1, "a photo of a cat", "", 1)["prompt_embeds"])  # fmt: skip
    assert other.used_embeddings == {}
    # the word must be the whole name: "myembx" is other tokens
    assert PromptEncoder(sd1, SD1, 1, embeddings).chunks("myembx")[0].fixes == []


def test_embedding_vectors_reach_the_text_encoder(sd1, embeddings):
    emb = embeddings.load(embeddings.index.find("stemb"))
    vectors = emb.vectors_for("", 32)
    ids = torch.tensor([[49406, 0] + [49407] * 75])
    with torch.inference_mode(), _token_embedding_fixes(sd1.text_encoder, [(1, vectors)]):
        out = sd1.text_encoder(ids, output_hidden_states=True)
    position = sd1.text_encoder.embeddings.position_embedding.weight[1]
    assert torch.allclose(out.hidden_states[0][0, 1], vectors[0] + position, atol=1e-6)
    # and only for that call: the layer is untouched afterwards
    with torch.inference_mode():
        again = sd1.text_encoder(ids, output_hidden_states=True)
    token = sd1.text_encoder.embeddings.token_embedding.weight[0]
    assert torch.allclose(again.hidden_states[0][0, 1], token + position, atol=1e-6)


def test_sdxl_embedding_on_sdxl_only(sd1, embeddings):
    sdxl = build_tiny_pipeline("sdxl")
    encoder = PromptEncoder(sdxl, SDXL, 1, embeddings)
    encoder.encode("xlemb style")
    assert list(encoder.used_embeddings) == ["xlemb"]
    # on SD 1.x the SDXL file is not used: the word stays plain text
    sd_encoder = PromptEncoder(sd1, SD1, 1, embeddings)
    assert torch.equal(sd_encoder.encode("xlemb style").embeds,
                       encode_prompts(sd1, SD1, "xlemb style", "", 1)["prompt_embeds"])  # fmt: skip
    assert sd_encoder.used_embeddings == {}


class Payload:  # not a tensor: the safe loader must refuse to build it
    pass


def test_unsafe_pickles_are_refused(tmp_path):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    torch.save({"string_to_param": {"*": torch.zeros(1, 32)}, "x": Payload()}, folder / "evil.pt")
    registry = EmbeddingRegistry(folder, HashCache(tmp_path / "cache.json"))
    with pytest.raises(NetworkFileError, match="evil.pt: refused"):
        registry.load(registry.index.find("evil"))
    assert registry.candidates("an evil prompt") == []  # logged and left out, no crash
    loaded, skipped = registry.describe(None)
    assert loaded == {} and "refused" in skipped["evil"]["error"]


@pytest.fixture
def ctx(data_dir, sd1):
    models = data_dir / "models"
    (models / "embeddings").mkdir(parents=True)
    (models / "VAE").mkdir(parents=True)
    write_a1111_embedding(models / "embeddings" / "myemb.pt")
    write_ldm_vae(models / "VAE" / "tiny-vae.safetensors", sd1)
    flags = parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"])
    context = build_context(flags)
    yield context
    context.close()


def run(ctx, prompt="a red cube", **extra):
    params = Txt2ImgParams(prompt=prompt, negative_prompt="blurry", steps=2, width=64, height=64,
                           seed=3, save_images=False, **extra).validated()  # fmt: skip
    job = ctx.jobs.submit("txt2img", params, owner="test")
    assert job.done.wait(300), "job did not finish"
    assert job.state == "done", job.error
    return job.result


def test_ti_hashes_in_the_infotext(ctx, data_dir):
    result = run(ctx, "a red cube, myemb")
    fields = parse_infotext(result.images[0].infotext)
    digest = hashlib.sha256((data_dir / "models/embeddings/myemb.pt").read_bytes()).hexdigest()
    assert fields["TI hashes"] == f"myemb: {digest[:12]}"
    assert "TI hashes" not in parse_infotext(run(ctx).images[0].infotext)


def test_vae_choice_per_job(ctx, data_dir):
    own = run(ctx)
    assert np.array_equal(
        np.asarray(run(ctx, vae="None").images[0].image), np.asarray(own.images[0].image)
    )
    chosen = run(ctx, vae="tiny-vae.safetensors")
    assert not np.array_equal(np.asarray(chosen.images[0].image), np.asarray(own.images[0].image))
    fields = parse_infotext(chosen.images[0].infotext)
    digest = hashlib.sha256((data_dir / "models/VAE/tiny-vae.safetensors").read_bytes()).hexdigest()
    assert fields["VAE hash"] == digest[:10] and fields["VAE"] == "tiny-vae.safetensors"
    own_fields = parse_infotext(own.images[0].infotext)
    assert "VAE" not in own_fields and "VAE hash" not in own_fields
    # the checkpoint's own VAE is back for the next job
    assert np.array_equal(np.asarray(run(ctx).images[0].image), np.asarray(own.images[0].image))


def test_automatic_vae_follows_the_checkpoint_name(ctx, data_dir):
    own = np.asarray(run(ctx).images[0].image)
    shutil.copy(
        data_dir / "models/VAE/tiny-vae.safetensors", data_dir / "models/VAE/tiny-sd1.safetensors"
    )
    ctx.networks.vaes.refresh()
    auto = run(ctx, vae="Automatic")
    assert parse_infotext(auto.images[0].infotext)["VAE"] == "tiny-sd1.safetensors"
    assert not np.array_equal(np.asarray(auto.images[0].image), own)


def test_a_vae_that_has_gone_falls_back_with_a_warning(ctx, data_dir):
    ctx.options.set("sd_vae", "deleted.safetensors")
    result = run(ctx)
    assert any("VAE not found: deleted.safetensors" in w for w in result.warnings)
    assert "VAE" not in parse_infotext(result.images[0].infotext)


def test_a_vae_of_another_shape_is_refused_by_name(tmp_path, sd1):
    folder = tmp_path / "VAE"
    folder.mkdir()
    path = write_ldm_vae(folder / "bad.safetensors", sd1)
    state = load_file(str(path))
    state["decoder.conv_out.weight"] = torch.zeros(3, 16, 3, 3)
    save_file(state, str(path))
    registry = VaeRegistry(folder, tmp_path / "ckpt", HashCache(tmp_path / "c.json"))
    with pytest.raises(NetworkFileError, match="bad.safetensors: does not fit"):
        with registry.applied(sd1, registry.resolve("bad.safetensors", None)):
            pass
    assert registry.choices() == ["Automatic", "None", "bad.safetensors"]
