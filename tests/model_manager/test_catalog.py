"""The Models tab's catalog: kinds and families from headers, SQLite index, file operations."""

from __future__ import annotations

import json
import os

import pytest

from tests.model_manager.fake_sites import SD1_EMBEDDING, SDXL_LORA, safetensors_bytes
from webui.model_manager.catalog import CatalogError, ModelCatalog, kind_roots, safe_name
from webui.model_manager.sniff import read_header, sniff


@pytest.fixture
def catalog(tmp_path):
    models = tmp_path / "models"
    roots = kind_roots(models, models / "Stable-diffusion", models / "Lora",
                       models / "embeddings", models / "VAE")  # fmt: skip
    for folder in roots.values():
        folder.mkdir(parents=True)
    cat = ModelCatalog(roots, tmp_path / "models.sqlite3", tmp_path / "trash")
    yield cat
    cat.close()


def test_kind_and_family_come_from_the_header(tmp_path, tiny_files):
    cases = {
        "lora.safetensors": (SDXL_LORA, ("lora", "SDXL")),
        "emb.safetensors": (SD1_EMBEDDING, ("embedding", "SD 1.x")),
        "vae.safetensors": (
            safetensors_bytes(
                {"encoder.conv_out.weight": [8, 1, 1, 1], "decoder.conv_in.weight": [1, 4, 1, 1]}
            ),
            ("vae", "SD (4-channel latents)"),
        ),  # fmt: skip
        "cn.safetensors": (
            safetensors_bytes(
                {
                    "control_model.input_hint_block.0.weight": [1, 1],
                    "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [
                        8,
                        1024,
                    ],
                }
            ),
            ("controlnet", "SD 2.x"),
        ),  # fmt: skip
        "esr.safetensors": (
            safetensors_bytes({"conv_first.weight": [1], "body.0.w": [1]}),
            ("upscaler", ""),
        ),  # fmt: skip
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        found = sniff(read_header(tmp_path / name))
        assert (found.kind, found.family) == expected, name
    sd1 = sniff(read_header(tiny_files["sd1"]))  # the tiny SD 1.x checkpoint of conftest
    assert (sd1.kind, sd1.family) == ("checkpoint", "SD 1.x")


def test_metadata_trigger_words_and_notes(catalog):
    lora = catalog.roots["lora"] / "style.safetensors"
    lora.write_bytes(SDXL_LORA)
    (catalog.roots["lora"] / "style.png").write_bytes(b"png")
    catalog.refresh()
    total, [row] = catalog.query(kind="lora")
    assert (total, row.family, row.trigger, row.base_model) == (
        1,
        "SDXL",
        "zzstyle",
        "sdxl_base_v1-0",
    )
    assert row.preview.endswith("style.png") and row.sha256 is None  # never hashed by a listing
    catalog.set_notes("lora", "style.safetensors", "use at 0.7")
    assert json.loads(lora.with_suffix(".json").read_text())["notes"] == "use at 0.7"
    digest = catalog.ensure_hash("lora", "style.safetensors")
    details = catalog.details("lora", "style.safetensors")
    assert details["sha256"] == digest and details["addnet"] and details["notes"] == "use at 0.7"
    assert details["metadata"]["ss_base_model_version"] == "sdxl_base_v1-0"
    assert catalog.query(search="0.7")[0] == 1 and catalog.query(search=digest[:10])[0] == 1
    assert catalog.families("lora") == ["SDXL"]


def test_rename_move_and_delete_take_the_sidecars_along(catalog, tmp_path):
    root = catalog.roots["lora"]
    (root / "a.safetensors").write_bytes(SDXL_LORA)
    (root / "a.preview.png").write_bytes(b"png")
    (root / "a.civitai.info").write_text("{}")
    catalog.refresh()
    catalog.set_notes("lora", "a.safetensors", "kept")
    assert catalog.rename("lora", "a.safetensors", "b") == "b.safetensors"
    assert sorted(os.listdir(root)) == [
        "b.civitai.info",
        "b.json",
        "b.preview.png",
        "b.safetensors",
    ]
    assert catalog.move("lora", "b.safetensors", "styles/xl") == "styles/xl/b.safetensors"
    [row] = catalog.query()[1]
    assert row.rel == "styles/xl/b.safetensors" and row.notes == "kept"
    assert row.preview.endswith("styles/xl/b.preview.png")
    where = catalog.delete("lora", "styles/xl/b.safetensors")
    assert where.is_file() and where.is_relative_to(tmp_path / "trash/lora")
    assert (where.parent / "b.preview.png").is_file() and catalog.query() == (0, [])
    assert list((root / "styles/xl").iterdir()) == []


def test_paths_and_names_that_leave_the_folder_are_refused(catalog, tmp_path):
    (tmp_path / "outside.safetensors").write_bytes(SDXL_LORA)
    (catalog.roots["lora"] / "a.safetensors").write_bytes(SDXL_LORA)
    catalog.refresh()
    for rel in ("../../outside.safetensors", "/etc/passwd", ""):
        with pytest.raises(CatalogError):
            catalog.details("lora", rel)
    for bad in ("../b", "x/y", "CON", "lpt1.txt", ".hidden", "a\x00b", "aux."):
        with pytest.raises(CatalogError):
            catalog.rename("lora", "a.safetensors", bad)
    with pytest.raises(CatalogError):
        catalog.move("lora", "a.safetensors", "../../escape")
    with pytest.raises(CatalogError, match="keeps the format"):
        catalog.rename("lora", "a.safetensors", "a.pt")
    assert catalog.rename("lora", "a.safetensors", "a.v2") == "a.v2.safetensors"
    with pytest.raises(CatalogError, match="unknown model kind"):
        catalog.details("script", "a.safetensors")
    assert safe_name("My LoRA v2.safetensors") == "My LoRA v2.safetensors"


def test_ten_thousand_loras_list_without_opening_files(catalog, monkeypatch):
    root = catalog.roots["lora"]
    first = root / "first.bin"  # not a model suffix: hard links to it make the 10,000 fast
    first.write_bytes(SD1_EMBEDDING)
    for i in range(100):
        folder = root / f"set{i:03d}"
        folder.mkdir()
        for j in range(100):
            os.link(first, folder / f"lora{i:03d}_{j:02d}.safetensors")
    assert catalog.refresh() == 10_000
    assert catalog.header_reads == 10_000  # each file's header read once
    opened: list[str] = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    assert catalog.refresh() == 10_000  # unchanged files: stat only
    total, page = catalog.query(kind="lora", search="lora042_", offset=50, limit=25)
    assert total == 100 and [r.name for r in page][:2] == ["lora042_50", "lora042_51"]
    assert catalog.query(kind="lora", family="SD 1.x", limit=10)[0] == 10_000
    assert opened == [] and catalog.header_reads == 10_000


def test_a_gguf_transformer_is_a_flux_checkpoint(catalog):
    from webui.model_manager.tiny_flux import build_tiny_flux, save_gguf

    save_gguf(build_tiny_flux(seed=0), catalog.roots["checkpoint"] / "flux1-tiny-Q8_0.gguf")
    (catalog.roots["checkpoint"] / "broken.gguf").write_bytes(b"GGUF-not-really")
    catalog.refresh()
    total, rows = catalog.query(kind="checkpoint")
    assert {r.rel: r.family for r in rows} == {"flux1-tiny-Q8_0.gguf": "FLUX", "broken.gguf": ""}
