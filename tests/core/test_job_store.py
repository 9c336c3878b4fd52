"""The job store (issue 14): every job in SQLite, restored after a crash in its order.

The codec round-trips every params kind the services submit (images as PNG blobs); the
queue records each transition, a new queue on the same file (what a restart is) queues the
unfinished jobs again (the running one first, marked) and fails with a reason what it
cannot restore; finished jobs are listed from the store, paged, with deleted files shown
as deleted; a rerun reuses the files its first attempt saved."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import MappingProxyType

import pytest
from PIL import Image

from webui.core import jobs as J
from webui.core.image_embed import EmbedImagesParams
from webui.core.interrogate import InterrogateParams
from webui.core.job_codec import CodecError, decode, decode_params, encode
from webui.core.job_store import NOT_RESTORED, RESTARTED, JobStore
from webui.core.jobs import JobQueue
from webui.core.params import Txt2ImgParams
from webui.core.params_img2img import ExtrasParams, HiresParams, Img2ImgParams, SDUpscaleParams
from webui.imaging.upscaler_list import UpscalerRef
from webui.model_manager.interrogate_files import Category, ClipFiles, OnnxTaggerFiles
from webui.model_manager.merge_params import CheckpointMergeParams, LoraMergeParams


def _image(mode: str, size=(16, 8), seed: int = 1) -> Image.Image:
    data = bytes((i * 37 + seed * 11) % 256 for i in range(size[0] * size[1] * len(mode)))
    return Image.frombytes(mode, size, data)


def _same(a, b) -> bool:
    """Equal values, comparing PIL images by mode, size and pixels."""
    if isinstance(a, Image.Image):
        return isinstance(b, Image.Image) and (a.mode, a.size, a.tobytes()) == (
            b.mode, b.size, b.tobytes())  # fmt: skip
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(
            _same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))  # fmt: skip
    return a == b


TXT2IMG = Txt2ImgParams(
    prompt="a cat, (fluffy:1.2)", negative_prompt="blurry", sampler_name="Euler a", steps=7,
    seed=1234, width=64, height=96, batch_count=2, styles=("one", "two"), checkpoint="tiny",
    hires=HiresParams(scale=1.5, upscaler=UpscalerRef("4x-Ultra", "/m/ESRGAN/4x-Ultra.pth")),
    script="xyz_plot",
    extension_args={"xyz_plot": {"x_type": "Seed", "x_values": "1, 2", "grid": True,
                                 "scale": 0.5}, "wildcards": {"enabled": False}},
)  # fmt: skip
IMG2IMG = Img2ImgParams(
    prompt="a dog", seed=7, init_images=(_image("RGB"), _image("RGBA", seed=2)),
    mask=_image("L", seed=3), outpaint=(8, 0, 0, 16), denoising_strength=0.4,
    inpaint_full_res=True,
)  # fmt: skip
SD_UPSCALE = Img2ImgParams(prompt="tiles", init_images=(_image("RGB"),), width=64, height=64,
                           sd_upscale=SDUpscaleParams(UpscalerRef("Lanczos"), 2.0, 32))  # fmt: skip
EXTRAS = ExtrasParams(images=((_image("RGB"), "a.png"), (_image("RGB", seed=5), "b.png")),
                      upscaler_1=UpscalerRef("Lanczos"), output_dir="/tmp/out")  # fmt: skip
INTERROGATE = InterrogateParams(
    _image("RGB"), "clip",
    clip=ClipFiles(Path("/m/blip"), Path("/m/clip"), (Category("flavors", Path("/m/f.txt"), 1),)),
)  # fmt: skip
INTERROGATE_WD14 = InterrogateParams(_image("RGB"), "wd-tagger",
                                     onnx=OnnxTaggerFiles(Path("/m/a.onnx"), Path("/m/t.csv")))  # fmt: skip

MERGE = CheckpointMergeParams("a.safetensors", "b", "c", interp_method="Add difference",
                              multiplier=0.25, bake_in_vae="v.pt", discard_weights="^model_ema")  # fmt: skip
LORA_MERGE = LoraMergeParams("a.safetensors", loras=(("one", 0.5), ("two", -1.0)))


@pytest.mark.parametrize(
    "kind, params",
    [("txt2img", TXT2IMG), ("img2img", IMG2IMG), ("img2img", SD_UPSCALE), ("extras", EXTRAS),
     ("load", "tiny [abc]"), ("load", None), ("unload", None),
     ("interrogate", INTERROGATE), ("interrogate", INTERROGATE_WD14),
     ("embed_images", EmbedImagesParams("/m/clip_vision_g.safetensors", "/d/jobs.sqlite3")),
     ("merge", MERGE), ("merge", LORA_MERGE)],
    ids=["txt2img", "img2img", "sd-upscale", "extras", "load", "load-default", "unload",
         "interrogate-clip", "interrogate-wd14", "embed-images", "merge", "lora-merge"],
)  # fmt: skip
def test_every_params_kind_round_trips(kind, params) -> None:
    text, blobs = encode(params)
    images = {"img2img": len(getattr(params, "init_images", ())) + 1, "extras": 2,
              "interrogate": 1}  # fmt: skip
    assert len(blobs) == images.get(kind, 0) - (params is SD_UPSCALE)  # images: PNG blobs
    back = decode_params(kind, text, blobs)
    assert _same(params, back)
    if params is IMG2IMG:
        assert back.validated() is back  # it runs as it was sent


def test_options_and_odd_values_round_trip() -> None:
    options = {"samples_format": "png", "sd_model_checkpoint": None, "limit": 3,
               "ratio": 0.5, "list": [1, "a"], "nested": {"k": (1, 2)},
               "by_number": {1: "one"}, "path": Path("/tmp/x"), "__dc__": "not a tag"}  # fmt: skip
    assert decode(*encode(options)) == options


def test_what_cannot_be_stored_or_restored_is_refused_clearly() -> None:
    with pytest.raises(CodecError, match="cannot store a value of type object"):
        encode({"x": object()})
    text, blobs = encode(TXT2IMG)
    with pytest.raises(CodecError, match="unknown job kind 'teleport'"):
        decode_params("teleport", text, blobs)
    with pytest.raises(CodecError, match="cannot run with Txt2ImgParams"):
        decode_params("img2img", text, blobs)
    renamed = text.replace('"negative_prompt"', '"old_negative"', 1)
    with pytest.raises(CodecError, match="no field 'old_negative'"):
        decode_params("txt2img", renamed, blobs)
    with pytest.raises(CodecError, match="cannot store a Foreign"):
        encode(Foreign())  # only the program's own dataclasses are written and read back
    for name in ("os:system", "subprocess:Popen", "webui.core.params:Nope", "webui.core.params"):
        with pytest.raises(CodecError, match="unknown stored type"):
            decode(f'{{"__dc__": "{name}", "fields": {{}}}}', [])


@dataclass(frozen=True)
class Foreign:
    x: int = 1


# --- the queue with a store -------------------------------------------------------------
class Runner:
    """Runs a job like the worker: one "image" per batch, saved through the job (reusing
    an earlier attempt's file), held at `gate` while `hold` names the job."""

    def __init__(self, folder: Path, gate: threading.Event | None = None, hold: str = ""):
        self.folder, self.gate, self.hold = folder, gate, hold
        self.order: list[str] = []
        self.written: list[str] = []
        self.started = threading.Event()

    def __call__(self, job: J.Job):
        self.order.append(job.params.prompt)
        images = []
        for i in range(job.params.batch_count):
            seed = job.params.seed + i
            if self.hold == job.params.prompt and i == 1:  # after its first image
                self.started.set()
                self.gate.wait(30)
                if job.should_stop():
                    break
            path = job.saved_earlier(seed)
            if path is None:
                path = str(self.folder / f"{len(list(self.folder.iterdir())):05d}-{seed}.png")
                _image("RGB", seed=seed).save(path)
                self.written.append(path)
            job.image_saved(path, seed=seed, infotext=f"{job.params.prompt}, Seed: {seed}")
            images.append(J.StoredImage(path, seed, f"{job.params.prompt}, Seed: {seed}"))
        return J.StoredResult(images)


def _params(prompt: str, seed: int = 100, batch_count: int = 1) -> Txt2ImgParams:
    return Txt2ImgParams(prompt=prompt, seed=seed, batch_count=batch_count)


@pytest.fixture
def folder(tmp_path) -> Path:
    out = tmp_path / "outputs"
    out.mkdir()
    return out


def test_a_restart_queues_the_unfinished_jobs_again_in_their_order(tmp_path, folder) -> None:
    db = tmp_path / "jobs.sqlite3"
    gate = threading.Event()
    first = Runner(folder, gate, hold="a1")
    store = JobStore(db)
    queue = JobQueue(first, store=store)
    queue.start()
    running = queue.submit("txt2img", _params("a1", seed=10, batch_count=2), owner="ann")
    assert first.started.wait(10)  # a1 saved its first image and is sampling the second
    queue.submit("txt2img", _params("a2"), owner="ann")
    queue.submit("txt2img", _params("b1"), owner="bob")
    a3 = queue.submit("txt2img", _params("a3"), owner="ann", options={"samples_format": "jpg"})
    assert queue.move(a3.id, -1, owner="ann")
    expected = ["b1", "a3", "a2"]
    assert [j.params.prompt for j in queue.schedule()] == expected
    store.close()  # the process dies here: nothing more reaches the file
    try:
        second = Runner(folder)
        again = JobQueue(second, store=JobStore(db))  # the restart
        waiting = again.schedule()
        assert [j.params.prompt for j in waiting] == ["a1", *expected]
        rerun = waiting[0]
        assert (rerun.id, rerun.attempts, rerun.rerun_reason) == (running.id, 1, RESTARTED)
        assert "will run again" in J.summary(rerun)["rerun"]
        assert dict(waiting[2].options)["samples_format"] == "jpg"  # its own options
        assert _same(waiting[2].params, _params("a3"))
        again.start()
        assert all(j.done.wait(10) for j in waiting)
        assert second.order == ["a1", *expected]
        assert [j.state for j in waiting] == [J.DONE] * 4
        assert (rerun.attempts, J.summary(rerun)["rerun"]) == (
            2, f"run again: {RESTARTED} (attempt 2)")  # fmt: skip
        # a1's first image was saved before the crash: the rerun kept that file
        seeds = sorted(int(p.stem.split("-")[1]) for p in folder.iterdir())
        assert seeds == [10, 11, 100, 100, 100]  # one file per image
        assert [Path(p).stem.split("-")[1] for p in second.written[:1]] == ["11"]
        stored = again.get(rerun.id)
        assert [i.seed for i in stored.images] == [10, 11]
        again.stop()
    finally:
        gate.set()
        queue.stop()


def test_a_job_that_cannot_be_restored_ends_failed_with_the_reason(tmp_path, folder) -> None:
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    queue = JobQueue(Runner(folder), store=store)  # never started: the jobs stay queued
    odd = queue.submit("teleport", _params("beam me up"), owner="ann")
    unstorable = queue.submit("txt2img", replace(_params("x"), extension_args={"e": {"f": object()}}))  # fmt: skip
    fine = queue.submit("txt2img", _params("fine"), owner="bob")
    store.close()
    again = JobQueue(Runner(folder), store=JobStore(db))
    assert [j.id for j in again.schedule()] == [fine.id]
    for job, why in ((odd, "unknown job kind 'teleport'"), (unstorable, "settings could not")):
        back = again.get(job.id)
        assert back.state == J.FAILED and back.error.startswith(NOT_RESTORED)
        assert why in back.error
        listed = {j.id: j for j, _ in again.listing()}
        assert listed[job.id].error == back.error  # visible in the queue
    again.stop()


def test_finished_jobs_are_listed_from_the_store_paged_and_not_capped(tmp_path, folder) -> None:
    db = tmp_path / "jobs.sqlite3"
    store = JobStore(db)
    queue = JobQueue(Runner(folder), store=store, keep_per_owner=3)
    queue.start()
    jobs = [queue.submit("txt2img", _params(f"p{i}", seed=i), owner="ann") for i in range(25)]
    other = queue.submit("txt2img", _params("secret", seed=99), owner="bob")
    assert all(j.done.wait(10) for j in [*jobs, other])
    queue.stop()
    store.close()

    again = JobQueue(Runner(folder), store=JobStore(db), keep_per_owner=3)
    mine = again.owner_jobs("ann")
    assert [j.prompt for j in mine] == [f"p{i}" for i in reversed(range(25))]
    assert [j.prompt for j in again.owner_jobs("ann", limit=5, offset=20)] == [
        "p4", "p3", "p2", "p1", "p0"]  # fmt: skip
    assert again.finished_count("ann") == 25 and again.finished_count() == 26
    page = again.listing(finished_limit=10, finished_offset=10)
    assert len(page) == 10 and all(pos is None for _, pos in page)
    oldest = mine[-1]
    assert oldest.state == J.DONE and oldest.images[0].infotext == "p0, Seed: 0"
    assert oldest.images[0].image.size == (16, 8) and not oldest.images[0].deleted
    Path(oldest.images[0].path).unlink()  # the user deleted the file
    gone = again.get(oldest.id).images[0]
    assert gone.deleted and gone.image is None
    again.stop()


def test_without_a_store_the_queue_keeps_what_it_kept(folder) -> None:
    queue = JobQueue(Runner(folder), keep_per_owner=3)
    queue.start()
    jobs = [queue.submit("txt2img", _params(f"p{i}", seed=i), owner="ann") for i in range(5)]
    assert all(j.done.wait(10) for j in jobs)
    assert [j.prompt for j in queue.owner_jobs("ann")] == ["p4", "p3", "p2"]
    assert [j.prompt for j in queue.owner_jobs("ann", limit=1, offset=1)] == ["p3"]
    assert queue.get(jobs[0].id) is None
    queue.stop()


def test_the_store_is_sqlite_in_wal_mode(tmp_path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    mode = store._read("PRAGMA journal_mode")[0][0]
    assert mode == "wal"
    job = J.Job("load", None, options=MappingProxyType({}))
    store.image_saved(job.id, 0, "/nowhere.png", None, "")  # a record without its job
    assert store.get(job.id) is None
    store.close()


def test_an_unreadable_store_is_moved_aside_and_a_new_one_started(tmp_path, caplog) -> None:
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = JobStore.open(path)
    assert store.count() == 0 and store._read("PRAGMA journal_mode")[0][0] == "wal"
    aside = [p.name for p in tmp_path.iterdir() if ".unreadable-" in p.name]
    assert len(aside) == 1 and (tmp_path / aside[0]).read_bytes().startswith(b"this is not")
    assert "cannot be read" in caplog.text
    store.close()


def test_a_job_id_of_another_users_stored_job_is_refused(tmp_path, folder) -> None:
    """force_task_id may reuse one's own finished job id, never replace another user's
    record (even one that left memory long ago)."""
    store = JobStore(tmp_path / "jobs.sqlite3")
    queue = JobQueue(Runner(folder), store=store, keep_per_owner=1)
    queue.start()
    old = queue.submit("txt2img", _params("ann's"), owner="ann", job_id="mine")
    newer = queue.submit("txt2img", _params("ann's newer"), owner="ann")
    assert old.done.wait(10) and newer.done.wait(10)
    assert queue.get("mine").prompt == "ann's"  # from the store: memory kept only one
    with pytest.raises(ValueError, match="already in use"):
        queue.submit("txt2img", _params("bob's"), owner="bob", job_id="mine")
    assert queue.get("mine").owner == "ann"
    again = queue.submit("txt2img", _params("ann's again"), owner="ann", job_id="mine")
    assert again.done.wait(10) and queue.get("mine").prompt == "ann's again"
    queue.stop()
    store.close()
