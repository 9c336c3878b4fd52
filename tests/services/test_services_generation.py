"""The generation service: one place where a request from the UI or the API becomes a job.

Most tests submit to a queue that is never started (jobs stay queued, nothing is
generated), over the real model manager, options and extension host of a context built on
the tiny SD 1.x checkpoint. The last ones go through the running app: every front end's
generation reaches `GenerationService.submit`.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.core.test_img2img import b64
from webui.app import create_app
from webui.context import build_context
from webui.core.jobs import JobQueue, QueueFullError
from webui.core.params import Txt2ImgParams
from webui.core.params_img2img import ExtrasParams, Img2ImgParams, SDUpscaleParams
from webui.imaging.upscaler_list import UpscalerRef
from webui.services.generation import (
    GenerationRequest,
    GenerationService,
    NoCheckpointError,
    RequestError,
)
from webui.settings import parse_flags
from webui.ui.common import InputError
from webui.ui.job_stream import submit_job

TXT2IMG_ONLY = """
from webui.ext import Control, Extension, Section

def setup():
    return Extension(name="txt2img_only", title="Txt2img only", run=lambda script, args: [],
                     section=Section("Txt2img only", (Control("n", "N", "number", 1),),
                                     tabs=("txt2img",)))
"""
TXT2IMG_SECTION = """
from webui.ext import Control, Extension, Section

def setup():
    return Extension(name="txt2img_section", section=Section("Txt2img section",
                     (Control("on", "On", "checkbox", True),), tabs=("txt2img",)))
"""


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_files):
    data = tmp_path_factory.mktemp("service")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_files["sd1"], data / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    (data / "models" / "ESRGAN").mkdir(parents=True)
    (data / "models" / "ESRGAN" / "4x-fake.pth").write_bytes(b"never loaded here")
    for name, source in (("txt2img_only", TXT2IMG_ONLY), ("txt2img_section", TXT2IMG_SECTION)):
        (data / "extensions" / name).mkdir(parents=True)
        (data / "extensions" / name / "extension.py").write_text(source)
    flags = parse_flags(["--data-dir", str(data), "--no-download-sd-model", "--api"])
    context = build_context(flags)
    yield context
    context.close()


def service(ctx, **changes) -> GenerationService:
    """A service over ctx's parts whose queue never runs a job (and so never frees one)."""
    parts = dict(models=ctx.models, options=ctx.options, extensions=ctx.extensions,
                 upscalers=ctx.upscalers, checkpoint_dir=ctx.flags.ckpt_dir,
                 jobs=JobQueue(lambda job: None, options_snapshot=ctx.options.as_dict))  # fmt: skip
    return GenerationService(**{**parts, **changes})


def txt2img(**fields) -> Txt2ImgParams:
    return Txt2ImgParams(**{"prompt": "a cube", "steps": 2, "width": 64, "height": 64, **fields})


def img2img(**fields) -> Img2ImgParams:
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    base = {"prompt": "a cube", "steps": 2, "width": 64, "height": 64, "init_images": (image,)}
    return Img2ImgParams(**{**base, **fields})


def extras() -> ExtrasParams:
    return ExtrasParams(
        images=((Image.new("RGB", (8, 8)), "a"),), upscaler_1=UpscalerRef("Lanczos")
    )


def loc_of(svc: GenerationService, request: GenerationRequest) -> tuple[str, ...]:
    with pytest.raises(RequestError) as info:
        svc.submit(request)
    assert info.value.message and str(info.value).startswith(".".join(info.value.loc))
    return info.value.loc


@pytest.mark.parametrize(
    ("kind", "fields", "loc"),
    [
        ("txt2img", {"params": txt2img(steps=0)}, ("steps",)),
        ("txt2img", {"params": txt2img(batch_count=0)}, ("batch_count",)),
        ("txt2img", {"params": txt2img(sampler_name="Warp drive")}, ("sampler_name",)),
        ("txt2img", {"override_settings": {"CLIP_stop_at_last_layers": 99}},
         ("override_settings", "CLIP_stop_at_last_layers")),
        ("txt2img", {"override_settings": {"sd_model_checkpoint": "no-such-model"}},
         ("override_settings", "sd_model_checkpoint")),
        ("txt2img", {"override_settings": {"sd_vae": 3}}, ("override_settings", "sd_vae")),
        ("txt2img", {"override_settings": {"outdir_samples": "/proc/no/such/place"}},
         ("override_settings", "outdir_samples")),
        ("txt2img", {"script": "No such script"}, ("script_name",)),
        ("txt2img", {"script": "X/Y/Z plot", "script_args": {"x_type": "Steps", "x_values": "x"}},
         ("script_args", "x_values")),
        ("txt2img", {"script": "xyz_plot", "script_args": {"warp": 1}}, ("script_args", "warp")),
        ("txt2img", {"alwayson": {"nothing here": {}}}, ("alwayson_scripts", "nothing here")),
        ("txt2img", {"alwayson": {"wildcards": {"args": {"enabled": "maybe"}}}},
         ("alwayson_scripts", "wildcards", "args", "enabled")),
        ("txt2img", {"job_id": "bad id with spaces"}, ("job_id",)),
        ("img2img", {"params": img2img(denoising_strength=2.0)}, ("denoising_strength",)),
        ("img2img", {"script": "Txt2img only"}, ("script_name",)),  # not an img2img script
        ("img2img", {"alwayson": {"txt2img_section": {"args": {"on": False}}}},
         ("alwayson_scripts", "txt2img_section")),  # not offered in img2img
        ("img2img", {"script": "SD upscale", "script_args": ["", 8, "nope", 2]},
         ("script_args", "upscaler")),
        ("img2img", {"script": "SD upscale", "script_args": {"overlap": 60}},
         ("script_args", "overlap")),  # more than a 64-pixel tile allows
        ("img2img", {"script": "SD upscale", "script_args": {"scale": 0.5}},
         ("script_args", "scale")),
        ("img2img", {"script": "SD upscale", "script_args": {"tiles": 2}},
         ("script_args", "tiles")),
        ("extras", {"script": "X/Y/Z plot"}, ("script_name",)),
    ],
)  # fmt: skip
def test_each_error_names_where_it_is(ctx, kind, fields, loc):
    params = fields.pop("params", None) or {"txt2img": txt2img, "img2img": img2img,
                                            "extras": extras}[kind]()  # fmt: skip
    svc = service(ctx)
    assert loc_of(svc, GenerationRequest(kind, params, "alice", **fields)) == loc
    assert svc.jobs.jobs() == []  # nothing was queued


def test_override_settings_only_affect_the_job(ctx):
    svc = service(ctx)
    before = ctx.options.as_dict()
    overrides = {"sd_model_checkpoint": "tiny-sd1", "CLIP_stop_at_last_layers": 2,
                 "samples_format": "webp", "sd_vae": "None", "no_such_option": 1}  # fmt: skip
    job = svc.submit(GenerationRequest("txt2img", txt2img(), "alice", override_settings=overrides))
    assert job.params.checkpoint == ctx.models.resolve("tiny-sd1").title
    assert job.params.clip_skip == 2
    assert job.options["samples_format"] == "webp" and job.options["sd_vae"] == "None"
    assert "no_such_option" not in job.options  # ignored, as A1111 ignores it
    assert ctx.options.as_dict() == before  # the server's options are untouched
    other = svc.submit(GenerationRequest("txt2img", txt2img(), "bob"))
    assert other.options["samples_format"] == before["samples_format"]
    assert other.params.clip_skip == 1 and other.params.checkpoint is None


def test_clip_skip_none_is_the_option_as_a1111_api_jobs_use_it(ctx):
    """The API sends no clip skip (None): the job takes the server's option, as A1111's
    processing reads opts.CLIP_stop_at_last_layers; override_settings still wins."""
    svc = service(ctx)
    before = ctx.options.get("CLIP_stop_at_last_layers")
    ctx.options.set("CLIP_stop_at_last_layers", 2)
    try:
        api_job = svc.submit(GenerationRequest("txt2img", txt2img(clip_skip=None), "alice"))
        overridden = svc.submit(GenerationRequest(
            "txt2img", txt2img(clip_skip=None), "alice",
            override_settings={"CLIP_stop_at_last_layers": 1}))  # fmt: skip
        ui_job = svc.submit(GenerationRequest("txt2img", txt2img(clip_skip=1), "bob"))
    finally:
        ctx.options.set("CLIP_stop_at_last_layers", before)
    assert api_job.params.clip_skip == 2
    assert overridden.params.clip_skip == 1
    assert ui_job.params.clip_skip == 1  # a front end's own value stays


def test_seed_is_fixed_and_params_validated(ctx):
    job = service(ctx).submit(GenerationRequest("txt2img", txt2img(seed=-1), "alice"))
    assert 0 <= job.params.seed and job.owner == "alice" and job.kind == "txt2img"


def test_script_args_by_name_and_by_a1111_position(ctx):
    svc = service(ctx)
    by_name = {"x_type": "Steps", "x_values": "1, 2", "y_type": "Nothing", "y_values": "",
               "z_type": "Nothing", "z_values": "", "draw_legend": False}  # fmt: skip
    positional = ["Steps", "1, 2", "Nothing", "", "Nothing", "", False]
    jobs = [svc.submit(GenerationRequest("txt2img", txt2img(), "alice", script="X/Y/Z plot",
                                         script_args=args)) for args in (by_name, positional)]  # fmt: skip
    assert jobs[0].params.script == jobs[1].params.script == "xyz_plot"
    assert jobs[0].params.extension_args == jobs[1].params.extension_args
    assert jobs[0].params.extension_args["xyz_plot"]["draw_legend"] is False
    # an always-on extension's args: by name, or positional under "args", or bare
    alwayson = [{"wildcards": {"args": {"enabled": False}}}, {"wildcards": {"args": [False]}},
                {"wildcards": [False]}]  # fmt: skip
    for given in alwayson:
        job = svc.submit(GenerationRequest("img2img", img2img(), "alice", alwayson=given))
        assert job.params.extension_args["wildcards"] == {"enabled": False}
    default = svc.submit(GenerationRequest("img2img", img2img(), "alice"))
    assert default.params.extension_args["wildcards"] == {"enabled": True}


def test_sd_upscale_by_name_by_position_and_by_index(ctx):
    svc = service(ctx)
    names = ctx.upscalers.names()
    asks = [{"overlap": 16, "upscaler": "4x-fake", "scale": 3},
            ["<p>A1111's note</p>", 16, "4x-fake", 3],
            ["", 16, names.index("4x-fake"), 3.0]]  # fmt: skip
    for args in asks:
        job = svc.submit(
            GenerationRequest("img2img", img2img(), "alice", script="sd upscale", script_args=args)
        )
        sd = job.params.sd_upscale
        assert sd == SDUpscaleParams(
            UpscalerRef("4x-fake", sd.upscaler.path), scale=3.0, overlap=16
        )
        assert sd.upscaler.path.endswith("4x-fake.pth") and job.params.script is None
    tiles = img2img(width=128, height=128)  # the default overlap (64) needs larger tiles
    plain = svc.submit(GenerationRequest("img2img", tiles, "alice", script="SD upscale"))
    assert plain.params.sd_upscale == SDUpscaleParams()  # Lanczos, x2, overlap 64
    assert loc_of(svc, GenerationRequest("txt2img", txt2img(), "a", script="SD upscale")) == (
        "script_name",  # an img2img script only
    )
    assert "SD upscale" in svc.scripts("img2img") and "SD upscale" not in svc.scripts("txt2img")
    assert "Txt2img only" in svc.scripts("txt2img") and "Txt2img only" not in svc.scripts("img2img")


def test_no_checkpoint(tmp_path):
    empty = build_context(parse_flags(["--data-dir", str(tmp_path), "--no-download-sd-model"]))
    try:
        svc = service(empty)
        with pytest.raises(NoCheckpointError) as info:
            svc.submit(GenerationRequest("txt2img", txt2img(), "alice"))
        assert str(empty.flags.ckpt_dir) in str(info.value)
        assert svc.jobs.jobs() == []
        assert svc.submit(GenerationRequest("extras", extras(), "alice")).kind == "extras"
        request = SimpleNamespace(username="alice", session_hash="page", cookies={})
        with pytest.raises(InputError, match="No checkpoint: add one"):  # the UI's own words
            submit_job(empty, request, "txt2img", txt2img())
    finally:
        empty.close()


def test_queue_full(ctx):
    svc = service(ctx, jobs=JobQueue(lambda job: None, limit_per_owner=2))
    for _ in range(2):
        svc.submit(GenerationRequest("txt2img", txt2img(), "alice"))
    with pytest.raises(QueueFullError):
        svc.submit(GenerationRequest("txt2img", txt2img(), "alice"))
    assert svc.submit(GenerationRequest("txt2img", txt2img(), "bob")).owner == "bob"
    # in the UI, a message
    ui_ctx = SimpleNamespace(generation=svc)
    request = SimpleNamespace(username="alice", session_hash="page", cookies={})
    with pytest.raises(InputError, match="Queue limit reached"):
        submit_job(ui_ctx, request, "txt2img", txt2img())


def test_without_an_extension_host_scripts_are_refused(ctx):
    svc = service(ctx, extensions=None)
    assert loc_of(svc, GenerationRequest("txt2img", txt2img(), "a", script="X/Y/Z plot")) == (
        "script_name",
    )
    assert loc_of(svc, GenerationRequest("txt2img", txt2img(), "a", alwayson={"x": {}})) == (
        "alwayson_scripts",
        "x",
    )
    assert svc.scripts("img2img") == ["SD upscale"]


def test_a_disabled_script_is_refused_and_not_listed(ctx):
    svc = service(ctx)
    ctx.extensions.set_enabled("prompt_matrix", False)
    try:
        assert "Prompt matrix" not in svc.scripts("txt2img")
        request = GenerationRequest("txt2img", txt2img(), "a", script="Prompt matrix")
        with pytest.raises(RequestError, match="is disabled") as info:
            svc.submit(request)
        assert info.value.loc == ("script_name",)
    finally:
        ctx.extensions.set_enabled("prompt_matrix", True)
    assert "Prompt matrix" in svc.scripts("txt2img") and "Prompt matrix" in svc.scripts("img2img")


def test_every_front_end_submits_through_the_service(ctx, monkeypatch):
    """POST /sdapi/v1/txt2img, /img2img, /webui/v1/txt2img, the extras routes and the UI's
    Generate all reach GenerationService.submit (one path, one set of checks)."""
    seen: list[tuple[str, str]] = []
    real = ctx.generation.submit

    def spy(request: GenerationRequest):
        seen.append((request.kind, request.owner))
        return real(request)

    monkeypatch.setattr(ctx.generation, "submit", spy)
    client = TestClient(create_app(ctx.flags, ctx))  # no lifespan: it would close the context
    body = {"prompt": "a cube", "steps": 1, "width": 64, "height": 64}
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
    assert client.post("/webui/v1/txt2img", json=body).status_code == 202
    image = b64(Image.new("RGB", (64, 64), (10, 200, 10)))
    assert (
        client.post("/sdapi/v1/img2img", json={**body, "init_images": [image]}).status_code == 200
    )
    single = client.post(
        "/sdapi/v1/extra-single-image", json={"image": image, "upscaler_1": "Lanczos"}
    )
    assert single.status_code == 200, single.text
    request = SimpleNamespace(username="carol", session_hash="page", cookies={})
    job = submit_job(ctx, request, "txt2img", txt2img(), script=None)
    assert job.done.wait(300)
    assert seen == [("txt2img", "api"), ("txt2img", "api"), ("img2img", "api"),
                    ("extras", "api"), ("txt2img", "carol")]  # fmt: skip
