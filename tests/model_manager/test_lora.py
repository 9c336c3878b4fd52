"""LoRA through the job queue and on the tiny pipelines: kohya and peft layouts, per job."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.lora_jobs import pixels, run_prompt
from tests.tiny_networks import write_kohya_lora, write_loha, write_peft_lora
from webui.context import build_context
from webui.core.families import SD1, SDXL
from webui.core.prompts import LoraRequest
from webui.imaging.infotext import parse_infotext
from webui.model_manager.lora import LoraManager, adapter_name
from webui.model_manager.network_files import AddnetHashCache, addnet_hash
from webui.model_manager.registry import HashCache
from webui.model_manager.tiny import build_tiny_pipeline
from webui.settings import parse_flags


@pytest.fixture(scope="module")
def sd1_pipe():
    pipe = build_tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def ctx(data_dir, sd1_pipe):
    lora_dir = data_dir / "models" / "Lora"
    (lora_dir / "styles").mkdir(parents=True)
    write_kohya_lora(lora_dir / "kohya.safetensors", sd1_pipe)
    write_peft_lora(lora_dir / "styles" / "peft.safetensors", sd1_pipe)
    write_loha(lora_dir / "loha.safetensors")
    flags = parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model"])
    context = build_context(flags)
    yield context
    context.close()


def run(ctx, prompt="a red cube", negative="blurry", **extra):
    return run_prompt(ctx, prompt, negative_prompt=negative, **extra)


def test_lora_per_job_weight_zero_changes_nothing_and_removal_is_exact(ctx, data_dir):
    before = pixels(run(ctx))
    assert np.array_equal(pixels(run(ctx, "a red cube <lora:kohya:0>")), before)
    with_lora = run(ctx, "a red cube <lora:kohya:1>")
    assert not np.array_equal(pixels(with_lora), before)
    fields = parse_infotext(with_lora.images[0].infotext)
    assert fields["Prompt"] == "a red cube <lora:kohya:1>"  # the tag stays in the infotext
    expected = addnet_hash(data_dir / "models" / "Lora" / "kohya.safetensors")[:12]
    assert fields["Lora hashes"] == f"kohya: {expected}"
    # the next job without the tag gives exactly the image from before any LoRA
    assert np.array_equal(pixels(run(ctx)), before)
    # the same again after a second LoRA job (the adapter stays cached, disabled)
    run(ctx, "a red cube <lora:kohya:0.5>")
    assert np.array_equal(pixels(run(ctx)), before)


def test_multipliers_negative_weights_and_several_loras(ctx):
    images = {
        tag: pixels(run(ctx, f"a red cube {tag}"))
        for tag in ("<lora:kohya:1>", "<lora:kohya:-1>", "<lora:kohya:0:1>", "<lora:peft:1>",
                    "<lora:kohya:1> <lora:peft:1>")
    }  # fmt: skip
    values = list(images.values())
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert not np.array_equal(values[i], values[j])
    # te=0, unet=1 is the UNet part alone: the same as naming te=0 explicitly
    named = pixels(run(ctx, "a red cube <lora:kohya:te=0:unet=1>"))
    assert np.array_equal(named, images["<lora:kohya:0:1>"])


def test_lora_in_the_negative_prompt_is_applied_too(ctx):
    before = pixels(run(ctx))
    result = run(ctx, negative="blurry <lora:peft:1>")
    assert not np.array_equal(pixels(result), before)
    assert "peft" in parse_infotext(result.images[0].infotext)["Lora hashes"]


def test_unknown_and_unloadable_loras_are_skipped_with_a_warning(ctx):
    before = pixels(run(ctx))
    result = run(ctx, "a red cube <lora:nope:1> <lora:loha:1> <lora:kohya:abc>")
    assert np.array_equal(pixels(result), before)
    text = "\n".join(result.warnings)
    assert "LoRA not found: nope" in text
    assert "loha.safetensors" in text and "LoHa" in text
    assert "'abc' is not a number" in text
    fields = parse_infotext(result.images[0].infotext)
    assert fields["Lora skipped"] == "<lora:nope:1>, <lora:loha:1>, <lora:kohya:abc>"
    assert "Lora hashes" not in fields


def test_lora_is_removed_when_the_job_fails(tmp_path, sd1_pipe):
    folder = tmp_path / "Lora"
    folder.mkdir()
    write_kohya_lora(folder / "k.safetensors", sd1_pipe)
    loras = LoraManager(
        folder, HashCache(tmp_path / "c.json"), AddnetHashCache(tmp_path / "a.json")
    )

    def generate():
        return sd1_pipe("a cat", num_inference_steps=2, width=64, height=64, output_type="np",
                        generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    before = generate()
    with pytest.raises(RuntimeError, match="sampling failed"):
        with loras.applied(sd1_pipe, [LoraRequest("k", 1.0, 1.0)], load=SD1.load_lora):
            assert not np.array_equal(generate(), before)
            raise RuntimeError("sampling failed")
    assert np.array_equal(generate(), before)
    # the file's tensors are cached and the adapter stays resident for the next job
    assert len(loras._tensors) == 1
    with loras.applied(sd1_pipe, [LoraRequest("k", 1.0, 1.0)], load=SD1.load_lora) as applied:
        assert applied.hashes["k"] == addnet_hash(folder / "k.safetensors")[:12]
    assert len(loras._tensors) == 1
    assert len(sd1_pipe.get_list_adapters()["unet"]) == 1


def test_resident_adapters_are_limited(tmp_path, sd1_pipe):
    folder = tmp_path / "Lora"
    folder.mkdir()
    for i in range(3):
        write_kohya_lora(folder / f"k{i}.safetensors", sd1_pipe, seed=10 + i, conv=False)
    loras = LoraManager(folder, HashCache(tmp_path / "c.json"), AddnetHashCache(tmp_path / "a.json"),
                        resident=2)  # fmt: skip
    pipe = build_tiny_pipeline("sd1")
    for i in range(3):
        with loras.applied(pipe, [LoraRequest(f"k{i}", 1.0, 1.0)], load=SD1.load_lora):
            pass
    assert len(pipe.get_list_adapters()["unet"]) == 2


def test_sdxl_kohya_file_in_sgm_naming(tmp_path):
    pipe = build_tiny_pipeline("sdxl")
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path / "Lora"
    folder.mkdir()
    write_kohya_lora(folder / "xl.safetensors", pipe, sgm=True)
    loras = LoraManager(
        folder, HashCache(tmp_path / "c.json"), AddnetHashCache(tmp_path / "a.json")
    )

    def generate():
        return pipe("a cat", num_inference_steps=2, width=64, height=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    before = generate()
    with loras.applied(pipe, [LoraRequest("xl", 1.0, 1.0)], load=SDXL.load_lora) as applied:
        assert not applied.warnings
        changed = generate()
    assert not np.array_equal(changed, before)
    assert set(pipe.get_list_adapters()) == {"unet", "text_encoder", "text_encoder_2"}
    assert np.array_equal(generate(), before)


def test_a_lora_for_another_model_is_refused_by_name(tmp_path, sd1_pipe):
    sdxl = build_tiny_pipeline("sdxl")
    folder = tmp_path / "Lora"
    folder.mkdir()
    write_kohya_lora(folder / "xl.safetensors", sdxl, sgm=True)
    loras = LoraManager(
        folder, HashCache(tmp_path / "c.json"), AddnetHashCache(tmp_path / "a.json")
    )
    request = LoraRequest("xl", 1.0, 1.0, "<lora:xl:1>")
    with loras.applied(sd1_pipe, [request], load=SD1.load_lora) as applied:
        assert applied.skipped == ["<lora:xl:1>"]
        assert "xl.safetensors" in applied.warnings[0]
    loaded = {a for names in sd1_pipe.get_list_adapters().values() for a in names}
    assert adapter_name(loras.find("xl")) not in loaded  # nothing half-loaded is left


def test_api_lists_networks_and_generates_with_them(data_dir, sd1_pipe):
    import json

    from fastapi.testclient import TestClient

    from tests.tiny_networks import write_a1111_embedding, write_ldm_vae
    from webui.app import create_app

    models = data_dir / "models"
    for folder in ("Lora", "embeddings", "VAE"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    write_kohya_lora(models / "Lora" / "kohya.safetensors", sd1_pipe)
    write_a1111_embedding(models / "embeddings" / "myemb.pt")
    write_ldm_vae(models / "VAE" / "tiny-vae.safetensors", sd1_pipe)
    (data_dir / "styles.csv").write_text("name,prompt,negative_prompt\nfilm,{prompt} on film,cgi\n")
    flags = parse_flags(
        ["--data-dir", str(data_dir), "--api", "--nowebui", "--no-download-sd-model"]
    )
    with TestClient(create_app(flags)) as client:
        api = "/sdapi/v1"
        (lora,) = client.get(f"{api}/loras").json()
        assert lora["name"] == "kohya" and lora["alias"] == "kohya"
        assert lora["metadata"]["ss_network_module"] == "networks.lora"
        write_kohya_lora(models / "Lora" / "later.safetensors", sd1_pipe)
        assert len(client.get(f"{api}/loras").json()) == 1  # indexed once...
        assert client.post(f"{api}/refresh-loras").status_code == 200
        assert [x["name"] for x in client.get(f"{api}/loras").json()] == ["kohya", "later"]
        embeddings = client.get(f"{api}/embeddings").json()
        assert embeddings["loaded"]["myemb"]["vectors"] == 2
        assert embeddings["loaded"]["myemb"]["step"] == 500 and embeddings["skipped"] == {}
        assert client.post(f"{api}/refresh-embeddings").status_code == 200
        vaes = client.get(f"{api}/sd-vae").json()
        assert vaes == [{"model_name": "tiny-vae.safetensors",
                         "filename": str(models / "VAE" / "tiny-vae.safetensors")}]  # fmt: skip
        assert client.post(f"{api}/refresh-vae").status_code == 200
        styles = client.get(f"{api}/prompt-styles").json()
        assert styles == [{"name": "film", "prompt": "{prompt} on film", "negative_prompt": "cgi"}]
        response = client.post(f"{api}/txt2img", json={
            "prompt": "a cat <lora:kohya:0.7>, myemb", "negative_prompt": "ugly", "steps": 2,
            "width": 64, "height": 64, "seed": 5, "styles": ["film"],
            "override_settings": {"sd_vae": "tiny-vae.safetensors"},
        })  # fmt: skip
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        text = info["infotexts"][0]
        assert text.startswith(
            "a cat <lora:kohya:0.7>, myemb on film\nNegative prompt: ugly, cgi\n"
        )
        assert 'Lora hashes: "kohya: ' in text and 'TI hashes: "myemb: ' in text
        assert info["sd_vae_name"] == "tiny-vae.safetensors" and len(info["sd_vae_hash"]) == 10
        assert info["styles"] == ["film"]
        # the override was for that job only: the server's option is unchanged
        assert client.get(f"{api}/options").json()["sd_vae"] == "Automatic"
