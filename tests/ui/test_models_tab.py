"""The Models tab's handlers (built in a bare gr.Blocks around a real ModelsService)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import gradio as gr
import pytest

from tests.model_manager.fake_sites import SD1_EMBEDDING, SDXL_LORA, FakeSites
from webui.model_manager.catalog import ModelCatalog, kind_roots
from webui.model_manager.fetch import Sites
from webui.services.models import ModelsService
from webui.ui.common import InputError
from webui.ui.models_tab import build_models_tab, table_page


@pytest.fixture
def tab(tmp_path):
    models = tmp_path / "models"
    roots = kind_roots(models, models / "Stable-diffusion", models / "Lora",
                       models / "embeddings", models / "VAE")  # fmt: skip
    (models / "Lora").mkdir(parents=True)
    for i in range(120):
        (models / "Lora" / f"l{i:03d}.safetensors").write_bytes(SDXL_LORA)
    (models / "embeddings").mkdir()
    (models / "embeddings" / "bad.safetensors").write_bytes(SD1_EMBEDDING)
    catalog = ModelCatalog(roots, tmp_path / "models.sqlite3", tmp_path / "trash")
    service = ModelsService(catalog, tmp_path / "downloads", sites=Sites)
    with gr.Blocks() as demo:
        build_models_tab(SimpleNamespace(model_files=service), demo)
    fns = {f.api_name: f.fn for f in demo.fns.values() if f.api_name}
    yield service, fns, tmp_path
    service.close()


def test_pages_filters_and_selection(tab):
    service, fns, _ = tab
    rows, keys, line = table_page(service, "", "", "", 0)
    assert line == "121 models · page 1 of 3" and len(rows) == 50
    assert keys[0] == ("embedding", "bad.safetensors") and rows[0][:3] == [
        "Textual Inversion",
        "bad.safetensors",
        "SD 1.x",
    ]
    assert table_page(service, "lora", "SDXL", "l11", 0)[2] == "10 models · page 1 of 1"
    assert table_page(service, "", "", "", 2)[1][-1] == ("lora", "l119.safetensors")
    event = gr.SelectData(None, {"index": [1, 1], "value": "l000.safetensors"})
    chosen, summary, notes, name, preview, metadata, variant, _ = fns["models_select"](keys, event)
    assert chosen == ("lora", "l000.safetensors") and name == "l000"
    assert "SDXL" in summary and "zzstyle" in summary
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert variant == ""  # not a checkpoint: no FLUX.1 variant


def test_buttons_rename_and_delete(tab):
    service, fns, tmp_path = tab
    key = ("lora", "l005.safetensors")
    filters = ("lora", "", "l005", 0)
    out = fns["models_rename"](key, "", "renamed", "", *filters)
    assert out[-1] == "Renamed to renamed.safetensors." and out[3] == (
        "lora",
        "renamed.safetensors",
    )
    assert (tmp_path / "models/Lora/renamed.safetensors").is_file()
    with pytest.raises(InputError, match="'..'"):
        fns["models_rename"](out[3], "", "../x", "", *filters)
    with pytest.raises(InputError, match="Select a model"):
        fns["models_delete"](None, "", "", "", *filters)
    out = fns["models_delete"](("lora", "renamed.safetensors"), "", "", "", *filters)
    assert out[-1].startswith("Moved to the trash") and out[3] is None
    assert not (tmp_path / "models/Lora/renamed.safetensors").exists()


def test_the_download_box_streams_progress_until_the_file_is_in_place(tab):
    service, fns, tmp_path = tab

    async def run(url: str) -> list:
        return [out async for out in fns["models_download"](url, "", "", "new", "", "")]

    with FakeSites() as site:
        shown = asyncio.run(run(f"{site.url}/cdn/emb.safetensors"))
    assert "Done" in shown[-1][1] and "embeddings/new/emb.safetensors" in shown[-1][1]
    assert (tmp_path / "models/embeddings/new/emb.safetensors").read_bytes() == SD1_EMBEDDING
    service.access_denied = lambda: True
    with pytest.raises(InputError, match="--enable-insecure-extension-access"):
        asyncio.run(run(f"{site.url}/cdn/emb.safetensors"))


def test_progress_line_shows_size_speed_eta_and_resumes():
    from webui.ui.models_tab import progress_html

    task = {"state": "downloading", "done": 5 << 20, "total": 10 << 20, "speed": 1 << 20,
            "eta": 65.0, "retries": 1, "message": ""}  # fmt: skip
    shown = progress_html(task)
    for part in ("5.0 MB of 10.0 MB", "1.0 MB/s", "ETA 1:05", "resumed 1×", "width:50.0%"):
        assert part in shown
    failed = progress_html(task | {"state": "failed", "message": "sha256 <mismatch>"})
    assert "sha256 &lt;mismatch&gt;" in failed and "Failed" in failed


def test_a_flux_checkpoint_is_marked_as_kontext(tab):
    from webui.model_manager import tiny_flux

    service, fns, tmp_path = tab
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    tiny_flux.save_transformer(tiny_flux.build_tiny_flux(seed=5), folder / "edit.safetensors")
    service.catalog.refresh()
    out = fns["models_variant"](("checkpoint", "edit.safetensors"), "", "edit", "",
                                "checkpoint", "", "", 0, "kontext")  # fmt: skip
    assert out[-1] == "FLUX.1 variant saved." and out[-2] == "kontext"  # the panel shows it
    assert json.loads((folder / "edit.json").read_text()) == {"flux_variant": "kontext"}
    with pytest.raises(InputError, match="not a FLUX.1 checkpoint"):
        fns["models_variant"](("lora", "l000.safetensors"), "", "", "", "lora", "", "", 0,
                              "kontext")  # fmt: skip
