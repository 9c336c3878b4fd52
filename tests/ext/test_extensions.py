"""The extension host: every hook, args by name, failures contained, state, git installs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from webui.app import create_app
from webui.context import build_context
from webui.core.params import Txt2ImgParams
from webui.core.params_img2img import ExtrasParams
from webui.ext.api import API_VERSION, ArgError, Control, Extension
from webui.ext.host import ExtensionAccessError, ExtensionHost
from webui.imaging.infotext import parse_infotext
from webui.imaging.upscaler_list import UpscalerRef
from webui.settings import parse_flags
from webui.ui.blocks import build_ui
from webui.ui.extensions_tab import extensions_table

ROOT = Path(__file__).resolve().parents[2]

EVERY_HOOK = '''
"""A test extension that uses every hook and records what it saw."""
from webui.ext import Control, Extension, Section, Tab

EVENTS = []


def setup():
    def on_startup(ctx):
        EVENTS.append(("startup", ctx.name, ctx.data_dir.name))

    def before_job(job, params, args):
        EVENTS.append(("before_job", job.kind, params.prompt, dict(args)))
        from dataclasses import replace
        return replace(params, prompt=f"{params.prompt}, {args['tag']}")

    def on_step(step, args):
        EVENTS.append(("step", step.step, step.steps))

    def after_job(job, result, args):
        EVENTS.append(("after_job", job.owner, len(result.images), result.params.prompt))

    def on_image_saved(saved, args):
        EVENTS.append(("saved", saved.path.name, saved.seed, saved.job.id))

    def router(ctx):
        from fastapi import APIRouter
        api = APIRouter()

        @api.get("/ping")
        def ping():
            return {"pong": ctx.name, "events": len(EVENTS)}
        return api

    def tab(ui):
        import gradio as gr
        gr.Markdown("every hook tab", elem_id="every_hook_tab")

    return Extension(
        name="every_hook", title="Every hook", version="0.1",
        section=Section("Every hook", (
            Control("strength", "Strength", "slider", 0.5, minimum=0, maximum=1, step=0.1),
            Control("tag", "Tag", "textbox", "tagged"),
        )),
        tab=Tab("Every hook", tab), router=router, on_startup=on_startup,
        before_job=before_job, on_step=on_step, after_job=after_job,
        on_image_saved=on_image_saved,
    )
'''


def write_extension(data_dir: Path, name: str, source: str) -> Path:
    folder = data_dir / "extensions" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "extension.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return folder


def events_of(name: str) -> list:
    return sys.modules[f"webui_extensions.{name}.extension"].EVENTS


def flags_for(data_dir: Path, *extra: str):
    return parse_flags(["--data-dir", str(data_dir), "--no-download-sd-model", "--api", *extra])


def txt2img(client: TestClient, **fields):
    body = {"prompt": "a cube", "steps": 2, "width": 64, "height": 64, "seed": 3, **fields}
    return client.post("/sdapi/v1/txt2img", json=body)


def test_every_hook_through_the_api(data_dir):
    write_extension(data_dir, "every_hook", EVERY_HOOK)
    ctx = build_context(flags_for(data_dir))
    try:
        events = events_of("every_hook")
        assert ("startup", "every_hook", "every_hook") in events
        with TestClient(create_app(ctx.flags, ctx)) as client:
            assert client.get("/ext/every_hook/ping").json()["pong"] == "every_hook"
            response = txt2img(client, save_images=True,
                               alwayson_scripts={"Every hook": {"args": {"tag": "from api"}}})  # fmt: skip
            assert response.status_code == 200, response.text
            info = json.loads(response.json()["info"])
            assert parse_infotext(info["infotexts"][0])["Prompt"] == "a cube, from api"
            # positional args are mapped onto the declared names
            response = txt2img(
                client, alwayson_scripts={"every_hook": {"args": [0.2, "positional"]}}
            )
            assert "a cube, positional" in json.loads(response.json()["info"])["infotexts"][0]
            bad = txt2img(client, alwayson_scripts={"every_hook": {"args": {"nope": 1}}})
            assert bad.status_code == 422
            assert bad.json()["detail"][0]["loc"] == [
                "body",
                "alwayson_scripts",
                "every_hook",
                "args",
                "nope",
            ]
            assert (
                txt2img(
                    client, alwayson_scripts={"every_hook": {"args": {"strength": 7}}}
                ).status_code
                == 422
            )
            listed = {e["name"]: e for e in client.get("/sdapi/v1/extensions").json()}
            assert listed["every_hook"]["enabled"] and listed["every_hook"]["error"] is None
            info = [
                s
                for s in client.get("/sdapi/v1/script-info").json()
                if s["extension"] == "every_hook"
            ]
            assert [a["name"] for a in info[0]["args"]] == ["strength", "tag"]
        kinds = [e[0] for e in events]
        before = [e for e in events if e[0] == "before_job"]
        assert before[0][3] == {"strength": 0.5, "tag": "from api"}
        assert before[1][3] == {"strength": 0.2, "tag": "positional"}
        assert [e[1:] for e in events if e[0] == "step"][:2] == [(1, 2), (2, 2)]
        saved = [e for e in events if e[0] == "saved"]
        assert len(saved) == 1 and saved[0][1].endswith("-3.png") and saved[0][2] == 3
        after = [e for e in events if e[0] == "after_job"]
        assert after[0] == ("after_job", "api", 1, "a cube, from api")
        assert kinds.index("before_job") < kinds.index("step") < kinds.index("after_job")
    finally:
        ctx.close()


WATCHER = """
from webui.ext import Extension
EVENTS = []
def setup():
    def on_step(step, args):
        EVENTS.append(("step", step.job.id, step.batch, step.step))
    def on_image_saved(saved, args):
        EVENTS.append(("saved", saved.job.id, saved.kind, saved.grid, saved.path.suffix))
    return Extension(name="watcher", on_step=on_step, on_image_saved=on_image_saved)
"""


def test_hooks_inside_the_worker_follow_the_job_itself(data_dir):
    """on_step follows the job's own Progress (a reader holding it from the start sees
    every step; previews are not steps); on_image_saved gets the job of every image and
    grid it writes, the Upscale tab's too."""
    write_extension(data_dir, "watcher", WATCHER)
    ctx = build_context(flags_for(data_dir))
    try:
        events = events_of("watcher")
        params = Txt2ImgParams(prompt="a cube", steps=3, width=64, height=64, seed=1,
                               batch_count=2).validated()  # fmt: skip
        job = ctx.jobs.submit("txt2img", params, options={"show_progress_every_n_steps": 1})
        progress = job.progress  # what the UI and the event hub hold from the start
        assert job.done.wait(120) and job.state == "done", job.error
        assert job.progress is progress and (progress.batch, progress.step) == (1, 3)
        assert progress.preview is not None
        steps = [e for e in events if e[0] == "step"]
        assert steps == [("step", job.id, b, s) for b in (0, 1) for s in (1, 2, 3)]
        assert [e for e in events if e[0] == "saved"] == [  # two images, then their grid
            ("saved", job.id, "txt2img", False, ".png")
        ] * 2 + [("saved", job.id, "txt2img", True, ".png")]
        events.clear()
        # a plot's cells of two images each make no batch grids: only the plot's own grid
        xyz = ctx.extensions.prepare(replace(params, batch_count=1, batch_size=2),
                                     script="xyz_plot",
                                     script_args={"x_type": "Seed", "x_values": "1, 2"})  # fmt: skip
        plot = ctx.jobs.submit("txt2img", xyz)
        assert plot.done.wait(120) and plot.state == "done", plot.error
        saved = [e for e in events if e[0] == "saved"]
        assert saved == [("saved", plot.id, "txt2img", False, ".png")] * 4 + [
            ("saved", plot.id, "txt2img", True, ".png")
        ]
        events.clear()
        upscale = ExtrasParams(images=((Image.new("RGB", (16, 16)), "a.png"),),
                               upscaler_1=UpscalerRef("Lanczos")).validated()  # fmt: skip
        extras = ctx.jobs.submit("extras", upscale)
        assert extras.done.wait(120) and extras.state == "done", extras.error
        assert events == [("saved", extras.id, "extras", False, ".png")]
    finally:
        ctx.close()


BROKEN_IMPORT = "raise RuntimeError('cannot import me')\n"
BROKEN_SETUP = "def setup():\n    return 42\n"
TOO_NEW = f"""
from webui.ext import Extension
def setup():
    return Extension(name="too_new", api_version={API_VERSION + 1})
"""
BROKEN_TAB = """
from webui.ext import Extension, Tab
def setup():
    def build(ui):
        raise RuntimeError("no tab today")
    return Extension(name="broken_tab", tab=Tab("Broken", build))
"""
BROKEN_HOOK = """
from webui.ext import Extension
CALLS = []
def setup():
    def before_job(job, params, args):
        CALLS.append(job.id)
        raise ValueError("hook exploded")
    return Extension(name="broken_hook", before_job=before_job)
"""


def test_broken_extensions_do_not_stop_the_app_or_the_job(data_dir):
    for name, source in [("broken_import", BROKEN_IMPORT), ("broken_setup", BROKEN_SETUP),
                         ("too_new", TOO_NEW), ("broken_hook", BROKEN_HOOK),
                         ("broken_tab", BROKEN_TAB)]:  # fmt: skip
        write_extension(data_dir, name, source)
    ctx = build_context(flags_for(data_dir))
    try:
        host = ctx.extensions
        errors = {r.key: r.error for r in host.records}
        assert "cannot import me" in errors["broken_import"]
        assert "must return webui.ext.Extension" in errors["broken_setup"]
        assert f"this web UI has {API_VERSION}" in errors["too_new"]
        assert errors["broken_hook"] is None
        with TestClient(create_app(ctx.flags, ctx)) as client:
            assert client.get("/").status_code == 200  # the UI is built
            first = txt2img(client)
            assert first.status_code == 200
            assert (
                parse_infotext(json.loads(first.json()["info"])["infotexts"][0])["Prompt"]
                == "a cube"
            )
            assert txt2img(client).status_code == 200
            listed = {e["name"]: e for e in client.get("/sdapi/v1/extensions").json()}
        assert host.record("broken_tab").error == "tab failed: RuntimeError: no tab today"
        record = host.record("broken_hook")
        assert not record.active and "before_job failed: ValueError: hook exploded" in record.error
        assert (
            len(sys.modules["webui_extensions.broken_hook.extension"].CALLS) == 1
        )  # then disabled
        assert "hook exploded" in listed["broken_hook"]["error"]
        table = extensions_table(host)
        assert "Failed: could not load: RuntimeError: cannot import me" in table
        assert "hook exploded" in table
        host.set_enabled("broken_hook", True)  # the user may give it another chance
        assert host.record("broken_hook").active
    finally:
        ctx.close()


def test_enabled_state_is_persisted_and_disabled_ones_are_not_imported(tmp_path):
    write_extension(tmp_path, "every_hook", EVERY_HOOK)
    flags = flags_for(tmp_path)
    host = ExtensionHost(flags)
    assert host.record("every_hook").active and host.record("xyz_plot").active
    host.set_enabled("every_hook", False)
    host.set_enabled("xyz_plot", False)
    assert json.loads((tmp_path / "extensions.json").read_text())["disabled"] == [
        "every_hook",
        "xyz_plot",
    ]
    sys.modules.pop("webui_extensions.every_hook.extension", None)
    again = ExtensionHost(flags)
    assert not again.record("every_hook").enabled and again.record("every_hook").extension is None
    assert "webui_extensions.every_hook.extension" not in sys.modules
    assert [e.name for e in again.scripts()] == ["prompt_matrix", "prompts_from_file"]
    params = Txt2ImgParams(prompt="x").validated()
    with pytest.raises(ArgError, match="script is disabled"):
        again.prepare(params, script="xyz_plot")
    again.set_enabled("every_hook", True)
    assert again.record("every_hook").active  # loaded on enabling


def test_args_by_name_and_by_position():
    ext = Extension(name="demo", section=None)
    assert ext.args_from({}) == {}
    from webui.ext.api import Section

    ext = Extension(name="demo", section=Section("Demo", (
        Control("on", "On", "checkbox", True),
        Control("count", "Count", "number", 2, minimum=1, maximum=4),
        Control("mode", "Mode", "radio", "a", choices=("a", "b")),
    )))  # fmt: skip
    assert ext.args_from({"count": 3.0}) == {"on": True, "count": 3, "mode": "a"}
    assert ext.args_from([False, 4, 1]) == {
        "on": False,
        "count": 4,
        "mode": "b",
    }  # index of a choice
    for bad, where in [({"count": 9}, "count"), ({"count": 2.5}, "count"), ({"on": "yes"}, "on"),
                       ({"mode": "c"}, "mode"), ([1, 2, 3, 4], "demo")]:  # fmt: skip
        with pytest.raises(ArgError) as exc:
            ext.args_from(bad)
        assert exc.value.loc[-1] == where
    with pytest.raises(ValueError, match="lowercase"):
        Extension(name="Bad Name")


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                           "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout  # fmt: skip


def _bare_repo(tmp_path: Path) -> tuple[Path, Path]:
    work = tmp_path / "work"
    work.mkdir()
    (work / "extension.py").write_text(textwrap.dedent('''
        from webui.ext import Extension
        VERSION = 1
        def setup():
            return Extension(name="from_git", title="From git", description=f"v{VERSION}")
    '''))  # fmt: skip
    _git("init", "-q", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "first", cwd=work)
    bare = tmp_path / "from_git.git"
    _git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    return work, bare


def test_install_from_git_check_and_update(tmp_path):
    work, bare = _bare_repo(tmp_path)
    data = tmp_path / "data"
    url = bare.as_uri()
    listening = ExtensionHost(flags_for(data, "--listen"))
    with pytest.raises(ExtensionAccessError, match="--enable-insecure-extension-access"):
        listening.install(url)
    assert not (data / "extensions" / "from_git").exists()
    host = ExtensionHost(flags_for(data, "--listen", "--enable-insecure-extension-access"))
    record = host.install(url)
    assert record.active and record.title == "From git" and len(record.version) == 8
    assert (data / "extensions" / "from_git" / "extension.py").is_file()
    with pytest.raises(ValueError, match="already exists"):
        host.install(url)
    assert host.check_updates() == {"from_git": "up to date"}
    (work / "extension.py").write_text(
        (work / "extension.py").read_text().replace("VERSION = 1", "VERSION = 2")
    )
    _git("commit", "-q", "-am", "second", cwd=work)
    _git("push", "-q", str(bare), "HEAD:main", cwd=work)
    assert host.check_updates() == {"from_git": "1 new commit(s)"}
    with pytest.raises(ExtensionAccessError):
        listening.update("from_git")
    commit = host.update("from_git")
    assert commit == _git("rev-parse", "HEAD", cwd=work).strip()
    assert "VERSION = 2" in (data / "extensions" / "from_git" / "extension.py").read_text()
    fresh = ExtensionHost(flags_for(data))  # after a restart it runs the new code
    assert fresh.record("from_git").extension.description == "v2"


def test_install_refuses_repositories_without_extension_py(tmp_path):
    work = tmp_path / "plain"
    work.mkdir()
    (work / "README").write_text("not an extension")
    _git("init", "-q", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "x", cwd=work)
    host = ExtensionHost(flags_for(tmp_path / "data"))
    with pytest.raises(ValueError, match="no extension.py"):
        host.install(work.as_uri())
    assert not (tmp_path / "data" / "extensions" / "plain").exists()
    with pytest.raises(ValueError, match="not a git URL"):
        host.install("--upload-pack=touch /tmp/pwned")


def test_entry_point_extensions(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "pkg_ext").mkdir(parents=True)
    (site / "pkg_ext" / "__init__.py").write_text(textwrap.dedent('''
        from webui.ext import Extension
        def setup():
            return Extension(name="pkg_ext", title="Packaged", version="2.0")
    '''))  # fmt: skip
    dist = site / "pkg_ext-2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pkg-ext\nVersion: 2.0\n")
    (dist / "entry_points.txt").write_text("[webui.extensions]\npkg_ext = pkg_ext:setup\n")
    monkeypatch.syspath_prepend(str(site))
    host = ExtensionHost(flags_for(tmp_path / "data"))
    record = host.record("pkg_ext")
    assert record.source == "package" and record.active and record.version == "2.0"
    assert record.title == "Packaged"


def test_example_extension_records_prompts(data_dir):
    shutil.copytree(
        ROOT / "extensions" / "prompt_history", data_dir / "extensions" / "prompt_history"
    )
    ctx = build_context(flags_for(data_dir))
    try:
        with TestClient(create_app(ctx.flags, ctx)) as client:
            assert txt2img(client, prompt="a lighthouse").status_code == 200
            off = {"prompt history": {"args": {"record": False}}}
            assert txt2img(client, prompt="not recorded", alwayson_scripts=off).status_code == 200
            entries = client.get("/ext/prompt_history/").json()
            assert [e["prompt"] for e in entries] == ["a lighthouse"]
            assert entries[0]["seed"] == 3 and "Steps: 2" in entries[0]["infotext"]
            assert client.delete("/ext/prompt_history/").json() == {"removed": 1}
        saved = data_dir / "extensions-data" / "prompt_history" / "history.json"
        assert json.loads(saved.read_text()) == []
        demo = build_ui(ctx)  # its tab, with send-to buttons wired like PNG Info's
        tab = next(
            b for b in demo.blocks.values() if getattr(b, "id", None) == "ext_prompt_history"
        )
        assert tab.label == "Prompt history"
        button = next(b for b in demo.blocks.values()
                      if getattr(b, "elem_id", None) == "ext_prompt_history_send_params_txt2img")  # fmt: skip
        wired = [
            d
            for d in demo.config["dependencies"]
            if [button._id, "click"] in map(list, d["targets"])
        ]
        assert len(wired) == 1
    finally:
        ctx.close()
