"""The image browser service: embeddings as a queued job, cached per image, and the
similarity map with clusters (webui/services/image_browser.py, core/image_embed.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.core.test_image_index import save_png
from tests.tiny_clip_vision import save_tiny_clip_vision
from webui.core.executors import LocalExecutor
from webui.core.image_embed import EmbedImagesParams
from webui.core.image_embed_run import embed_images
from webui.core.image_index import Filters, ImageIndex
from webui.core.job import DONE, Job
from webui.core.jobs import JobQueue
from webui.errors import UserError
from webui.services.image_browser import ImageBrowser


@pytest.fixture(scope="module")
def clip_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "clip_vision"
    save_tiny_clip_vision(folder)
    return folder


@pytest.fixture
def browser(tmp_path, clip_models):
    out = tmp_path / "outputs"
    for n in range(6):  # two colour families: red-ish and blue-ish
        colour = "red" if n < 3 else "blue"
        save_png(out / f"{n}.png", f"a {colour} square", n, mtime=1_000 + n)
    extra = tmp_path / "mine"
    save_png(extra / "x.png", "from my folder", 77)
    queue = JobQueue(executors=[LocalExecutor(embed_images)])
    queue.start()
    index = ImageIndex(tmp_path / "jobs.sqlite3")
    shown = ImageBrowser(index, lambda: [out, extra], tmp_path / "trash", clip_models, queue)
    yield shown
    queue.stop()
    index.close()


def run_embeddings(browser: ImageBrowser, model: str) -> Job:
    job = browser.submit_embeddings(model)
    assert browser.jobs.wait(job, timeout=120)
    assert job.state == DONE, job.error
    return job


def test_embeddings_run_on_the_queue_and_are_cached(browser, monkeypatch) -> None:
    assert browser.scan().added == 7
    assert browser.clip_models() == ["tiny-vit", "tiny_clip_vision.safetensors"]
    job = run_embeddings(browser, "tiny_clip_vision.safetensors")
    assert job.kind == "embed_images" and job.result.embedded == 7
    assert job.progress.step == job.progress.steps == 7
    assert run_embeddings(browser, "tiny_clip_vision.safetensors").result.embedded == 0
    # a changed file loses its embedding and is embedded again, alone
    changed = browser.search(Filters(seed=2)).images[0]
    save_png(Path(changed.path), "a red square, again", 2, mtime=9_000)
    browser.scan()
    assert run_embeddings(browser, "tiny_clip_vision.safetensors").result.embedded == 1
    ids, vectors = browser.index.embeddings(browser.index.embedding_models()[0])
    assert len(ids) == 7 and vectors.shape == (7, 16)


def test_the_similarity_map_places_and_clusters_every_embedded_image(browser) -> None:
    browser.scan()
    with pytest.raises(UserError, match="at least 3 images"):
        browser.similarity_map("tiny-vit")
    run_embeddings(browser, "tiny-vit")
    shown = browser.similarity_map("tiny-vit", cluster_count=2)
    assert len(shown.points) == 7 and shown.cluster_count == 2
    assert sorted(p.id for p in shown.points) == sorted(i.id for i in browser.search().images)
    members = shown.members(shown.points[0].cluster)
    page = browser.search(Filters(ids=members))
    assert page.total == len(members) >= 1
    assert browser.similarity_map("tiny-vit", cluster_count=2) is shown  # cached
    with pytest.raises(UserError, match="not found"):
        browser.similarity_map("../clip_vision/tiny-vit")


def test_trash_and_unknown_ids(browser, tmp_path) -> None:
    browser.scan()
    first = browser.search().images[0]
    moved = browser.trash(first.id)
    assert moved.parent == tmp_path / "trash" and moved.is_file()
    assert browser.scan().removed == 0 and browser.search().total == 6
    with pytest.raises(UserError, match="no image with id"):
        browser.trash(first.id)
    with pytest.raises(UserError, match="no image with id"):
        browser.set_favourite(10**9, True)


def test_unknown_or_missing_models_are_refused(browser, tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        browser.submit_embeddings("clip_vision_g.safetensors")
    empty = ImageBrowser(browser.index, lambda: [], tmp_path / "t", tmp_path / "none")
    assert empty.clip_models() == []
    with pytest.raises(UserError, match="put one in"):
        empty.model_path("x.safetensors")


def test_an_interrupted_embedding_job_stops_between_batches(browser) -> None:
    browser.scan()
    model = browser.model_path("tiny-vit")
    job = Job("embed_images", EmbedImagesParams(str(model), str(browser.index.path), 2))
    batches = []
    real = job.should_stop

    def stop_after_one() -> bool:
        batches.append(1)
        return len(batches) > 1 or real()

    job.should_stop = stop_after_one  # an interrupt after the first batch
    result = embed_images(job)
    assert result.embedded == 2
    assert len(browser.index.embeddings(result.model)[0]) == 2
