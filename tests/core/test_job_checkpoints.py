"""JobCheckpoints: the job's other checkpoints, leased once, kept off the GPU when the
model manager's cache would not keep them (fakes: no GPU is needed to check the rule)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from webui.core.checkpoints import JobCheckpoints


class FakePipe:
    def __init__(self):
        self.device = "cuda"
        self.moves: list[str] = []

    def to(self, device: str):
        self.device = device
        self.moves.append(device)


def lease(name: str):
    return SimpleNamespace(info=SimpleNamespace(path=Path(name)), pipe=FakePipe(),
                           spec=SimpleNamespace(family="sdxl"))  # fmt: skip


class FakeModels:
    def __init__(self, limit: int, device: str = "cuda", offload: str = "none"):
        self.plan = SimpleNamespace(device=device, offload=offload)
        self.effective_limit = limit
        self.loaded: list[Path] = [Path("main")]
        self.acquired: list[str] = []

    def resolve(self, name: str):
        return SimpleNamespace(path=Path(name))

    def acquire(self, info):
        self.acquired.append(str(info.path))
        self.loaded = [*self.loaded, info.path][-self.effective_limit :]
        return lease(str(info.path))

    def loaded_paths(self):
        return list(self.loaded)


FAMILIES = SimpleNamespace(of=lambda spec: "family")


def test_a_cache_of_one_keeps_one_model_on_the_gpu():
    models, main = FakeModels(limit=1), lease("main")
    with JobCheckpoints(models, FAMILIES, main, "family") as held:
        refiner, _ = held.lease("refiner")
        assert held.lease("refiner")[0] is refiner and held.lease("main")[0] is main
        assert models.acquired == ["refiner"]  # leased once; the main one is not reloaded
        held.use(refiner)
        assert (main.pipe.device, refiner.pipe.device) == ("cpu", "cuda")
        held.use(main)
        assert (main.pipe.device, refiner.pipe.device) == ("cuda", "cpu")
    assert refiner.pipe.device == "cuda"  # the end: the cached refiner goes back


def test_nothing_moves_when_the_cache_keeps_both_or_on_the_cpu_or_offloaded():
    for models in (
        FakeModels(limit=2),
        FakeModels(1, device="cpu"),
        FakeModels(1, offload="model"),
    ):
        main = lease("main")
        with JobCheckpoints(models, FAMILIES, main, "family") as held:
            refiner, _ = held.lease("refiner")
            held.use(refiner)
            held.use(main)
        assert main.pipe.moves == [] and refiner.pipe.moves == []


def test_the_jobs_networks_go_on_each_other_checkpoint_and_come_off_at_the_end():
    applied: list[tuple[str, str]] = []

    @contextmanager
    def networks(held_lease, family):
        applied.append(("on", str(held_lease.info.path)))
        yield
        applied.append(("off", str(held_lease.info.path)))

    main = lease("main")
    with JobCheckpoints(FakeModels(limit=2), FAMILIES, main, "family", networks) as held:
        held.lease("refiner")
        held.lease("refiner")  # held already: not applied twice
        held.lease("main")  # the main one has them from the worker
        assert applied == [("on", "refiner")]
    assert applied == [("on", "refiner"), ("off", "refiner")]
