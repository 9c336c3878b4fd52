"""Model families as modules: the families passed in decide what loads and how it runs.

- The model manager knows only the families the composition root gives it: without SDXL,
  an SDXL file is refused with a clear message.
- A family defined outside core (here, in the test) runs through the real worker: its
  label, sampler, conditioning, infotext fields and preview colours are its own, with no
  change to core.
- Core and the model manager never test a family's name outside `core/families`.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch

from webui.core.families import SD1, SD2, SDXL, Families, default_families
from webui.core.families.sd import SDFamily
from webui.core.jobs import Job
from webui.core.params import Txt2ImgParams
from webui.core.worker import make_runner
from webui.imaging.infotext import parse_infotext
from webui.imaging.store import OutputStore
from webui.model_manager.loader import CheckpointLoadError, identify_file
from webui.model_manager.manager import ModelManager
from webui.model_manager.memory import plan_memory
from webui.model_manager.registry import CheckpointRegistry, HashCache
from webui.options import Options

ROOT = Path(__file__).resolve().parents[2]


def manager(folder: Path, families: Families) -> ModelManager:
    registry = CheckpointRegistry(folder, HashCache(folder / "hashes.json"))
    return ModelManager(registry, plan_memory(use_cpu_all=True), families=families)


def test_default_families_recognise_in_order(tiny_files):
    families = default_families()
    assert families.names() == ["sdxl", "sdxl_refiner", "sd2", "sd1", "flux1", "flux1-fill",
                                "flux1-kontext", "sd3", "zimage"]  # fmt: skip
    for name, family in (("sd1", SD1), ("sd1-inpaint", SD1), ("sd2", SD2), ("sdxl", SDXL)):
        spec = identify_file(tiny_files[name], families)
        assert families.of(spec) is family and spec.family_label == family.label
    with pytest.raises(LookupError, match="no model family 'pixart'"):
        families.get("pixart")


def test_only_the_families_passed_in_are_loaded(tmp_path, tiny_files):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_files["sdxl"], folder / "xl.safetensors")
    models = manager(folder, Families((SD1, SD2)))
    with pytest.raises(CheckpointLoadError, match="no text encoder this program knows"):
        models.acquire(models.resolve("xl"))
    assert "xl.safetensors: checkpoint has no text encoder" in models.unreadable(
        models.resolve("xl")
    )


class MarkedSD1(SDFamily):
    """SD 1.x files under another family: everything core asks comes from here."""

    latent_rgb = ((1.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))

    def __init__(self):
        super().__init__(name="marked", label="Marked 1.x", default_size=512, open_clip=False,
                         text_encoder="cond_stage_model.transformer.text_model.")  # fmt: skip
        self.calls: list[str] = []

    def sampler(self, name, schedule):
        self.calls.append("sampler")
        return super().sampler(name, schedule)

    def conditioning(self, pipe, prompt, negative, clip_skip, *, steps, embeddings=None):
        self.calls.append("conditioning")
        return super().conditioning(pipe, prompt, negative, clip_skip, steps=steps,
                                    embeddings=embeddings)  # fmt: skip

    def infotext_fields(self, params):
        return {"Family": self.label}


def test_a_family_from_outside_core_runs_through_the_worker(tmp_path, tiny_files):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_files["sd1"], folder / "tiny.safetensors")
    family = MarkedSD1()
    families = Families((family,))
    store = OutputStore(tmp_path / "outputs")
    options = Options()  # the defaults, in memory
    options.set("show_progress_every_n_steps", 1)
    worker = make_runner(manager(folder, families), store, options, families=families)
    params = Txt2ImgParams(prompt="a cube", steps=3, width=64, height=64, seed=1,
                           save_images=False).validated()  # fmt: skip
    job = Job(kind="txt2img", params=params)
    result = worker(job)
    assert result.model_family == "Marked 1.x"
    assert family.calls == ["sampler", "conditioning"]
    assert parse_infotext(result.images[0].infotext)["Family"] == "Marked 1.x"
    preview = torch.tensor(list(job.progress.preview.getdata()), dtype=torch.float32)
    assert preview[:, 1:].eq(127).all() or preview[:, 1:].eq(128).all()  # red channel only


FAMILY_NAMES = {"sd1", "sd2", "sdxl", "SDXL", "StableDiffusionXL"}


def _family_tests(path: Path) -> list[str]:
    """Places in a module that compare with a family name or read `.family` to decide."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if any(isinstance(p, ast.Constant) and p.value in FAMILY_NAMES for p in parts):
                found.append(f"{path.name}:{node.lineno}")
            if any(isinstance(p, ast.Attribute) and p.attr == "family" for p in parts):
                found.append(f"{path.name}:{node.lineno}")
        elif isinstance(node, ast.Constant) and node.value in FAMILY_NAMES:
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_core_never_asks_which_family_outside_the_family_modules():
    core = [p for p in (ROOT / "webui" / "core").glob("*.py")]
    manager_modules = [ROOT / "webui" / "model_manager" / f"{name}.py"
                       for name in ("identify", "loader", "manager", "optimize", "memory",
                                    "lora", "embeddings", "vae")]  # fmt: skip
    found = [hit for path in core + manager_modules for hit in _family_tests(path)]
    assert found == []
