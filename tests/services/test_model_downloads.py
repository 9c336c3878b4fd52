"""Model downloads against a local fake of Hugging Face and Civitai (tests/model_manager/fake_sites.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.model_manager.fake_sites import (
    BIG_BLOB,
    KEY,
    SD1_EMBEDDING,
    SDXL_LORA,
    FakeSites,
    sha,
)
from webui.model_manager.catalog import CatalogError, ModelCatalog, kind_roots
from webui.model_manager.fetch import Sites, resolve
from webui.services.models import DownloadAccessError, DownloadRequest, ModelsService


@pytest.fixture(scope="module")
def site():
    with FakeSites() as fake:
        yield fake


@pytest.fixture
def service(tmp_path, site):
    models = tmp_path / "models"
    roots = kind_roots(models, models / "Stable-diffusion", models / "Lora",
                       models / "embeddings", models / "VAE")  # fmt: skip
    catalog = ModelCatalog(roots, tmp_path / "models.sqlite3", tmp_path / "trash")
    changed: list[str] = []
    sites = Sites(huggingface=site.url, civitai=site.url, civitai_key="")
    svc = ModelsService(catalog, tmp_path / "downloads", sites=lambda: svc.test_sites,
                        on_change=changed.append)  # fmt: skip
    svc.test_sites = sites
    svc.downloader.backoff = 0.05
    svc.changed = changed
    yield svc
    svc.close()


def wait(task, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not task.finished:
        assert time.monotonic() < deadline, task.as_dict()
        time.sleep(0.05)
    return task


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_hugging_face_blob_url_lands_in_the_folder_its_header_names(service, site, tmp_path):
    url = f"{site.url}/someone/styles/blob/main/style.safetensors"
    task = wait(service.start_download(DownloadRequest(url)))
    assert task.state == "done", task.message
    target = tmp_path / "models/Lora/style.safetensors"
    assert target.read_bytes() == SDXL_LORA
    assert (task.kind, task.family) == ("lora", "SDXL")
    assert task.progress.done == task.progress.total == len(SDXL_LORA)
    # the /blob/ page became /resolve/, which redirected to the CDN
    assert ("HEAD", "/someone/styles/resolve/main/style.safetensors", None, None) in site.requests
    assert service.changed == ["lora"]
    total, rows = service.catalog.query(kind="lora")
    assert total == 1 and rows[0].family == "SDXL" and rows[0].trigger == "zzstyle"
    assert files_under(tmp_path / "downloads") == []


def test_repo_and_file_and_a_subfolder(service, site, tmp_path):
    request = DownloadRequest("someone/emb", file="emb.safetensors", folder="mine/sd1")
    task = wait(service.start_download(request))
    assert task.state == "done", task.message
    assert (tmp_path / "models/embeddings/mine/sd1/emb.safetensors").read_bytes() == SD1_EMBEDDING
    assert (task.kind, task.family) == ("embedding", "SD 1.x")


def test_a_dropped_connection_resumes_with_a_range_request(service, site, tmp_path):
    site.dropped.discard("drop-style.safetensors")
    task = wait(service.start_download(DownloadRequest(f"{site.url}/cdn/drop-style.safetensors")))
    assert task.state == "done", task.message
    data = site.files["drop-style.safetensors"]
    assert (tmp_path / "models/Lora/drop-style.safetensors").read_bytes() == data
    ranges = [r for m, p, r, a in site.requests if p == "/cdn/drop-style.safetensors" and r]
    assert ranges == [f"bytes={len(data) // 2}-"]
    assert task.progress.retries == 1


def test_civitai_page_with_a_wrong_stated_hash_leaves_nothing(service, site, tmp_path):
    task = wait(service.start_download(DownloadRequest(f"{site.url}/models/106?modelVersionId=6")))
    assert task.state == "failed"
    assert "sha256 mismatch" in task.message and "0" * 64 in task.message
    assert files_under(tmp_path / "models") == [] if (tmp_path / "models").exists() else True
    assert files_under(tmp_path / "downloads") == []


def test_civitai_gated_file_needs_the_api_key(service, site, tmp_path):
    task = wait(service.start_download(DownloadRequest(f"{site.url}/models/107?modelVersionId=7")))
    assert task.state == "failed" and "API key" in task.message
    service.test_sites = Sites(huggingface=site.url, civitai=site.url, civitai_key=KEY)
    task = wait(service.start_download(DownloadRequest(f"{site.url}/api/download/models/7")))
    assert task.state == "done", task.message
    assert (tmp_path / "models/embeddings/emb.safetensors").read_bytes() == SD1_EMBEDDING


def test_a_10_gb_file_is_refused_before_writing_when_the_disk_is_too_small(service, site, tmp_path):
    service.downloader.free_space = lambda folder: 5 << 30
    task = wait(service.start_download(DownloadRequest(f"{site.url}/cdn/huge-model.safetensors")))
    assert task.state == "failed"
    assert "not enough disk space" in task.message and "10.0 GB" in task.message
    assert files_under(tmp_path / "downloads") == []
    assert not (tmp_path / "models/Lora").exists() or files_under(tmp_path / "models/Lora") == []


def test_names_from_the_site_or_the_user_never_leave_models(service, site, tmp_path):
    task = wait(service.start_download(DownloadRequest(f"{site.url}/cdn/evil-x.safetensors")))
    assert task.state == "failed" and "'..'" in task.message
    assert not (tmp_path / "evil.safetensors").exists()
    assert files_under(tmp_path / "downloads") == []
    for bad in ("../x.safetensors", "a/b.safetensors", "CON", "nul.txt", "..", "x\\y"):
        with pytest.raises(CatalogError):
            service.start_download(DownloadRequest(f"{site.url}/cdn/style.safetensors", name=bad))
    with pytest.raises(CatalogError):
        service.start_download(DownloadRequest(f"{site.url}/cdn/style.safetensors", folder="../x"))


def test_a_pickled_upscaler_goes_by_its_suffix_and_the_users_hash_is_checked(
    service, site, tmp_path
):
    url = f"{site.url}/cdn/4x-upscaler.pth"
    task = wait(service.start_download(DownloadRequest(url, sha256="ab" * 32)))
    assert task.state == "failed" and "sha256 mismatch" in task.message
    task = wait(service.start_download(DownloadRequest(url, sha256=sha(BIG_BLOB))))
    assert task.state == "done", task.message
    assert (tmp_path / "models/ESRGAN/4x-upscaler.pth").read_bytes() == BIG_BLOB
    task = wait(service.start_download(DownloadRequest(url)))
    assert task.state == "failed" and "exists already" in task.message


def test_downloads_are_refused_on_a_lan_server(service, site):
    service.access_denied = lambda: True
    with pytest.raises(DownloadAccessError, match="--enable-insecure-extension-access"):
        service.start_download(DownloadRequest(f"{site.url}/cdn/style.safetensors"))


def test_civitai_info_by_hash_is_fetched_once_and_cached(service, site, tmp_path):
    lora = tmp_path / "models/Lora/mine.safetensors"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(SDXL_LORA)
    service.catalog.refresh()
    info = service.civitai_info("lora", "mine.safetensors")
    assert info["found"] and info["model"] == "Zz Style" and info["trained_words"] == ["zzstyle"]
    assert info["base_model"] == "SDXL 1.0"
    assert (tmp_path / "models/Lora/mine.preview.png").read_bytes() == b"\x89PNG fake"
    asked = len(site.requests)
    assert service.civitai_info("lora", "mine.safetensors") == info
    assert len(site.requests) == asked  # from the cache
    details = service.catalog.details("lora", "mine.safetensors")
    assert details["civitai"] == info and details["preview"].endswith("mine.preview.png")


def test_a_partial_file_left_by_an_earlier_run_is_resumed(service, site, tmp_path):
    url = f"{site.url}/models/105"  # a Civitai model page without a version: its latest
    source = resolve(url, service.test_sites, service.client)
    assert (source.kind, source.sha256, source.filename) == (
        "lora",
        sha(SDXL_LORA),
        "style.safetensors",
    )
    partial = service.downloader.partial_path(source)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(SDXL_LORA[:1000])
    before = len(site.requests)
    task = wait(service.start_download(DownloadRequest(url)))
    assert task.state == "done", task.message
    assert (tmp_path / "models/Lora/style.safetensors").read_bytes() == SDXL_LORA
    assert ("GET", "/cdn/style.safetensors", "bytes=1000-", None) in site.requests[before:]
    assert not partial.exists()


def test_progress_has_speed_and_eta_and_cancel_leaves_nothing(service, site, tmp_path):
    task = service.start_download(DownloadRequest(f"{site.url}/cdn/slow-model.safetensors"))
    deadline = time.monotonic() + 60
    while not (task.progress.speed > 0 and task.progress.eta is not None):
        assert time.monotonic() < deadline and not task.finished, task.as_dict()
        time.sleep(0.05)
    shown = task.as_dict()
    assert shown["state"] == "downloading" and 0 < shown["done"] < shown["total"]
    assert shown["total"] == len(site.files["slow-model.safetensors"]) and shown["eta"] > 0
    task.cancel.set()
    wait(task)
    assert task.state == "cancelled", task.message
    assert files_under(tmp_path / "downloads") == []
    assert not (tmp_path / "models/Lora").exists() or files_under(tmp_path / "models/Lora") == []
