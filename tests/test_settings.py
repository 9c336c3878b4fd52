"""Tests of webui.settings: A1111 command-line flags and persisted options (config.json)."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from webui.options import OPTION_DEFS, Options
from webui.settings import PROJECT_DIR, Flags, parse_credentials, parse_flags


def parse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Parse argv expecting a flag error; return the single stderr line."""
    with pytest.raises(SystemExit) as exc_info:
        parse_flags(argv)
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


# ------------------------------------------------------------------------- flags


def test_defaults() -> None:
    flags = parse_flags([])
    assert flags.port == 7860
    assert flags.server_host == "127.0.0.1"
    assert not flags.api and not flags.nowebui and not flags.listen
    assert flags.precision == "autocast"
    assert flags.use_cpu == () and not flags.cpu_only
    assert flags.data_dir == PROJECT_DIR == Path(__file__).resolve().parent.parent
    assert flags.models_dir == PROJECT_DIR / "models"
    assert flags.ckpt_dir == PROJECT_DIR / "models" / "Stable-diffusion"
    assert flags.lora_dir == PROJECT_DIR / "models" / "Lora"
    assert flags.vae_dir == PROJECT_DIR / "models" / "VAE"
    assert flags.embeddings_dir == PROJECT_DIR / "models" / "embeddings"
    assert flags.outputs_dir == PROJECT_DIR / "outputs"
    assert flags.config_path == PROJECT_DIR / "config.json"
    assert flags.cache_path == PROJECT_DIR / "cache.json"
    assert flags.ckpt is None
    assert flags.log_level == "INFO"


def test_flags_is_frozen() -> None:
    flags = parse_flags([])
    with pytest.raises(dataclasses.FrozenInstanceError):
        flags.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("argv", "host"),
    [
        ([], "127.0.0.1"),
        (["--listen"], "0.0.0.0"),
        (["--server-name", "myhost.lan"], "myhost.lan"),
        (["--listen", "--server-name", "10.0.0.5"], "10.0.0.5"),
    ],
)
def test_server_host(argv: list[str], host: str) -> None:
    assert parse_flags(argv).server_host == host


def test_many_a1111_flags() -> None:
    argv = (
        "--port 7861 --api --xformers --medvram --no-half-vae --precision full "
        "--use-cpu all interrogate --skip-torch-cuda-test --opt-sdp-attention --autolaunch "
        "--share --no-hashing --freeze-settings --log-level debug --subpath sd/ "
        "--cors-allow-origins http://a,http://b --localization de --demo --exit"
    ).split()
    flags = parse_flags(argv)
    assert flags.port == 7861 and flags.api and flags.xformers and flags.medvram
    assert flags.no_half_vae and not flags.no_half and flags.precision == "full"
    assert flags.use_cpu == ("all", "interrogate") and flags.cpu_only
    assert flags.share and flags.autolaunch and flags.no_hashing and flags.freeze_settings
    assert flags.log_level == "DEBUG"
    assert flags.subpath == "/sd"
    assert flags.cors_allow_origins == "http://a,http://b"
    assert flags.demo and flags.exit


def test_nowebui_implies_api() -> None:
    flags = parse_flags(["--nowebui"])
    assert flags.api and flags.nowebui and not flags.webui_enabled


def test_extension_access_rule() -> None:
    assert not parse_flags([]).disable_extension_access
    assert parse_flags(["--listen"]).disable_extension_access
    flags = parse_flags(["--listen", "--enable-insecure-extension-access"])
    assert not flags.disable_extension_access


@pytest.mark.parametrize("value", ["0", "65536", "-1", "http", "78.5"])
def test_port_validation(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = parse_error(["--port", value], capsys)
    assert "--port" in line and "--help" in line


@pytest.mark.parametrize("value", ["1", "65535"])
def test_port_bounds_accepted(value: str) -> None:
    assert parse_flags(["--port", value]).port == int(value)


def test_gradio_auth_format(capsys: pytest.CaptureFixture[str]) -> None:
    flags = parse_flags(["--gradio-auth", "alice:pw1,bob:p:w2"])
    assert flags.gradio_credentials() == [("alice", "pw1"), ("bob", "p:w2")]
    for bad in ["alice", "alice:", ":pw", "alice:pw,bob", ","]:
        line = parse_error(["--gradio-auth", bad], capsys)
        assert "--gradio-auth" in line and "user:password" in line


def test_api_auth(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_flags(["--api-auth", "u:p"]).api_credentials() == [("u", "p")]
    assert parse_flags([]).api_credentials() == []
    assert "--api-auth" in parse_error(["--api-auth", "nopassword"], capsys)


def test_gradio_auth_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "auth.txt"
    good.write_text("carol:pw3\ndave:pw4,erin:pw5\n", encoding="utf-8")
    flags = parse_flags(["--gradio-auth", "a:b", "--gradio-auth-path", str(good)])
    assert flags.gradio_credentials() == [
        ("a", "b"),
        ("carol", "pw3"),
        ("dave", "pw4"),
        ("erin", "pw5"),
    ]
    bad = tmp_path / "bad.txt"
    bad.write_text("carol\n", encoding="utf-8")
    assert "--gradio-auth-path" in parse_error(["--gradio-auth-path", str(bad)], capsys)
    missing = str(tmp_path / "missing.txt")
    assert "file not found" in parse_error(["--gradio-auth-path", missing], capsys)


def test_parse_credentials_names_source() -> None:
    with pytest.raises(ValueError, match="--api-auth: expected user:password"):
        parse_credentials("x", "--api-auth")


def test_tls_flags_need_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    key.write_text("k")
    cert.write_text("c")
    assert "together" in parse_error(["--tls-keyfile", str(key)], capsys)
    flags = parse_flags(["--tls-keyfile", str(key), "--tls-certfile", str(cert)])
    assert flags.tls_keyfile == key and flags.tls_certfile == cert
    missing = str(tmp_path / "nope.pem")
    line = parse_error(["--tls-keyfile", str(key), "--tls-certfile", missing], capsys)
    assert "--tls-certfile" in line and "not found" in line


def test_unknown_flag_suggests_closest(capsys: pytest.CaptureFixture[str]) -> None:
    line = parse_error(["--lisen"], capsys)
    assert "unknown flag --lisen" in line
    assert "did you mean --listen?" in line
    assert "--help" in line
    line = parse_error(["--port", "7861", "--xformer"], capsys)
    assert "unknown flag --xformer" in line and "--xformers" in line


def test_unknown_flag_without_near_miss(capsys: pytest.CaptureFixture[str]) -> None:
    line = parse_error(["--completely-unrelated-thing=3"], capsys)
    assert "unknown flag --completely-unrelated-thing" in line
    assert "did you mean" not in line


def test_abbreviations_are_not_guessed(capsys: pytest.CaptureFixture[str]) -> None:
    assert "unknown flag --list" in parse_error(["--list"], capsys)


def test_stray_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert "unexpected argument 'extra'" in parse_error(["--listen", "extra"], capsys)


def test_bad_choice_and_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--precision" in parse_error(["--precision", "fp8"], capsys)
    assert "--log-level" in parse_error(["--log-level", "loud"], capsys)


def test_unknown_flag_in_subprocess_exit_code_2() -> None:
    code = "from webui.settings import parse_flags; parse_flags(None)"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--foo"],
        capture_output=True,
        text=True,
        cwd=PROJECT_DIR,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "launch.py: error: unknown flag --foo; run 'launch.py --help' to list flags"
    ]


def test_settings_module_imports_only_stdlib() -> None:
    code = (
        "import sys, webui.settings; "
        "bad = [m for m in ('torch', 'gradio', 'diffusers', 'fastapi') if m in sys.modules]; "
        "print(bad)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_DIR, timeout=60
    )
    assert proc.stdout.strip() == "[]", proc.stderr


def test_derived_paths_follow_data_dir(tmp_path: Path) -> None:
    flags = parse_flags(["--data-dir", str(tmp_path)])
    assert flags.data_dir == tmp_path.resolve()
    assert flags.models_dir == tmp_path / "models"
    assert flags.ckpt_dir == tmp_path / "models" / "Stable-diffusion"
    assert flags.lora_dir == tmp_path / "models" / "Lora"
    assert flags.vae_dir == tmp_path / "models" / "VAE"
    assert flags.embeddings_dir == tmp_path / "models" / "embeddings"
    assert flags.outputs_dir == tmp_path / "outputs"
    assert flags.config_path == tmp_path / "config.json"
    assert flags.cache_path == tmp_path / "cache.json"
    assert flags.styles_file == tmp_path / "styles.csv"


def test_explicit_dirs_override(tmp_path: Path) -> None:
    ckpts, loras = tmp_path / "my-ckpts", tmp_path / "loras"
    models = tmp_path / "m"
    flags = parse_flags(
        [
            "--data-dir", str(tmp_path / "data"),
            "--models-dir", str(models),
            "--ckpt-dir", str(ckpts),
            "--lora-dir", str(loras),
            "--ckpt", str(ckpts / "a.safetensors"),
        ]
    )  # fmt: skip
    assert flags.ckpt_dir == ckpts
    assert flags.lora_dir == loras
    assert flags.vae_dir == models / "VAE"
    assert flags.embeddings_dir == models / "embeddings"
    assert flags.outputs_dir == tmp_path / "data" / "outputs"
    assert flags.ckpt == ckpts / "a.safetensors"


def test_relative_dirs_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    flags = parse_flags(["--ckpt-dir", "ck"])
    assert flags.ckpt_dir == tmp_path / "ck"
    assert flags.ckpt_dir.is_absolute()


def test_flags_constructed_directly_derive_paths(tmp_path: Path) -> None:
    flags = Flags(data_dir=tmp_path)
    assert flags.ckpt_dir == tmp_path / "models" / "Stable-diffusion"
    assert flags.gfpgan_models_path == tmp_path / "models" / "GFPGAN"  # A1111's folders
    assert flags.codeformer_models_path == tmp_path / "models" / "Codeformer"
    assert Flags(data_dir=tmp_path, nowebui=True).api


def test_as_cmd_flags_is_json_and_hides_secrets() -> None:
    flags = parse_flags(["--api-auth", "u:secret", "--use-cpu", "all"])
    data = json.loads(json.dumps(flags.as_cmd_flags()))
    assert data["api_auth"] == "***"
    assert data["use_cpu"] == ["all"]
    assert data["port"] == 7860
    assert "secret" not in json.dumps(data)


# ----------------------------------------------------------------------- options


def test_option_defaults() -> None:
    options = Options()
    assert options.as_dict() == {
        "sd_model_checkpoint": "",
        "sd_checkpoints_limit": 1,
        "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1,
        "show_progress_every_n_steps": 3,
        "show_progress_type": "Approx cheap",
        "return_grid": True,
        "localization": "Auto",
        "queue_limit_per_user": 10,
        "queue_show_others_prompts": False,
        "vae_tiling_threshold": 1536,
        "vae_slicing_threshold": 1024,
        "oom_retry_lower_memory": True,
        "token_merging_ratio": 0.0,
        "deepcache_interval": 0,
        "deepcache_branch": 0,
        "first_block_cache_threshold": 0.0,
        "taylorseer_interval": 0,
        "initial_noise_multiplier": 1.0,
        "img2img_extra_noise": 0.0,
        "s_min_uncond": 0.0,
        "s_min_uncond_all": False,
        "text_encoder_release": "Auto",
        "eta_ddim": 0.0,
        "eta_ancestral": 1.0,
        "s_churn": 0.0,
        "s_tmin": 0.0,
        "s_tmax": 0.0,
        "s_noise": 1.0,
        "eta_tcd": 0.3,
        "samples_format": "png",
        "samples_filename_pattern": "",
        "save_images_add_number": True,
        "grid_save": True,
        "grid_format": "png",
        "grid_only_if_multiple": True,
        "n_rows": -1,
        "jpeg_quality": 80,
        "webp_lossless": False,
        "save_to_dirs": True,
        "grid_save_to_dirs": True,
        "directories_filename_pattern": "[date]",
        "outdir_samples": "",
        "outdir_save": "",
        "image_browser_folders": "",
        "quicksettings_list": [
            "sd_model_checkpoint",
            "forge_additional_modules",
            "sd_vae",
            "CLIP_stop_at_last_layers",
        ],
        "notification_audio": False,
        "notification_min_seconds": 10.0,
        "notification_volume": 100,
        "keyedit_precision_attention": 0.1,
        "keyedit_precision_extra": 0.05,
        "interrogate_keep_models_in_memory": False,
        "interrogate_return_ranks": False,
        "interrogate_clip_num_beams": 1,
        "interrogate_clip_min_length": 24,
        "interrogate_clip_max_length": 48,
        "interrogate_clip_dict_limit": 1500,
        "interrogate_clip_skip_categories": [],
        "interrogate_deepbooru_score_threshold": 0.5,
        "deepbooru_sort_alpha": True,
        "deepbooru_use_spaces": True,
        "deepbooru_escape": True,
        "deepbooru_filter_tags": "",
        "interrogate_wd14_model": "",
        "interrogate_wd14_general_threshold": 0.35,
        "interrogate_wd14_character_threshold": 0.85,
        "civitai_api_key": "",
        "huggingface_token": "",
        "huggingface_base_url": "https://huggingface.co",
        "civitai_base_url": "https://civitai.com",
        "face_restoration_model": "CodeFormer",
        "code_former_weight": 0.5,
        "sdxl_refiner_low_aesthetic_score": 2.5,
        "sdxl_refiner_high_aesthetic_score": 6.0,
        "forge_additional_modules": [],
        "sd_vae_decode_method": "Full",
        "sd_vae_encode_method": "Full",
        "control_net_no_detectmap": False,
        "control_net_unit_count": 3,
        "training_yield_to_jobs": True,
    }
    limit = options.definitions["sd_checkpoints_limit"]
    assert limit.label == "Maximum number of checkpoints loaded at the same time"
    assert {d.key for d in OPTION_DEFS} == set(options.as_dict())
    assert all(d.section and d.label for d in OPTION_DEFS)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("sd_checkpoints_limit", 0),
        ("sd_checkpoints_limit", "2"),
        ("sd_checkpoints_limit", True),
        ("CLIP_stop_at_last_layers", 13),
        ("CLIP_stop_at_last_layers", 0),
        ("show_progress_every_n_steps", -1),
        ("samples_format", "bmpx"),
        ("sd_model_checkpoint", 5),
        ("outdir_samples", None),
    ],
)
def test_option_validation(key: str, value: object) -> None:
    options = Options()
    before = options.get(key)
    with pytest.raises(ValueError, match=key):
        options.set(key, value)
    assert options.get(key) == before


def test_option_set_and_unknown_key() -> None:
    options = Options()
    options.set("CLIP_stop_at_last_layers", 2)
    options.set("sd_checkpoints_limit", 3.0)  # what a Gradio Number sends
    options.set("show_progress_every_n_steps", 0)
    assert options.get("CLIP_stop_at_last_layers") == 2
    assert options.get("sd_checkpoints_limit") == 3
    assert isinstance(options.get("sd_checkpoints_limit"), int)
    with pytest.raises(KeyError, match="no_such_option"):
        options.get("no_such_option")
    with pytest.raises(KeyError, match="no_such_option"):
        options.set("no_such_option", 1)


def test_option_update_is_all_or_nothing() -> None:
    options = Options()
    with pytest.raises(ValueError, match="CLIP_stop_at_last_layers"):
        options.update({"sd_vae": "None", "CLIP_stop_at_last_layers": 99})
    assert options.get("sd_vae") == "Automatic"


def test_read_only_options() -> None:
    options = Options(read_only=True)
    with pytest.raises(PermissionError, match="freeze-settings"):
        options.set("sd_vae", "None")


def test_as_dict_is_a_copy() -> None:
    options = Options()
    values = options.as_dict()
    values["sd_vae"] = "changed"
    assert options.get("sd_vae") == "Automatic"


def test_save_and_load_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.json"
    options = Options.load(path)  # missing file: defaults
    assert options.as_dict() == Options().as_dict()
    options.set("sd_model_checkpoint", "v1-5-pruned-emaonly.safetensors [6ce0161689]")
    options.set("CLIP_stop_at_last_layers", 2)
    options.save()
    assert json.loads(path.read_text(encoding="utf-8"))["CLIP_stop_at_last_layers"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp file left
    again = Options.load(path)
    assert again.as_dict() == options.as_dict()


def test_unknown_keys_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"sd_vae": "None", "a1111_only_option": [1, 2]}))
    options = Options.load(path)
    assert options.get("sd_vae") == "None"
    options.set("samples_format", "webp")
    options.save()
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["a1111_only_option"] == [1, 2]
    assert data["samples_format"] == "webp"


def test_invalid_value_in_file_falls_back_to_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"CLIP_stop_at_last_layers": 40, "sd_vae": "x.safetensors"}))
    with caplog.at_level(logging.WARNING, logger="webui.settings"):
        options = Options.load(path)
    assert options.get("CLIP_stop_at_last_layers") == 1
    assert options.get("sd_vae") == "x.safetensors"
    assert "CLIP_stop_at_last_layers" in caplog.text


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", "\x00\x01garbage"])
def test_corrupt_config_is_backed_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(content, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="webui.settings"):
        options = Options.load(path)
    assert options.as_dict() == Options().as_dict()
    backups = list(tmp_path.glob("config.json.bad-*"))
    assert len(backups) == 1
    assert backups[0].read_text(encoding="utf-8") == content
    assert "corrupted" in caplog.text and str(backups[0]) in caplog.text
    options.set("sd_vae", "None")
    options.save()
    assert Options.load(path).get("sd_vae") == "None"


def test_invalid_utf8_config_is_backed_up(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'{"sd_vae": "\xff\xfe"}')
    options = Options.load(path)
    assert options.get("sd_vae") == "Automatic"
    assert len(list(tmp_path.glob("config.json.bad-*"))) == 1


def test_two_corruptions_in_the_same_second_keep_both_backups(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    for content in ("{bad one", "{bad two"):
        path.write_text(content, encoding="utf-8")
        Options.load(path)
    backups = sorted(p.read_text() for p in tmp_path.glob("config.json.bad-*"))
    assert backups == ["{bad one", "{bad two"]


def test_save_without_path_is_an_error() -> None:
    with pytest.raises(ValueError, match="no path"):
        Options().save()


def test_ray_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert not parse_flags([]).ray  # the default: one process, no Ray
    assert parse_flags(["--ray"]).ray
    flags = parse_flags(["--ray-workers", "2"])
    assert flags.ray and flags.ray_workers == 2  # implies --ray
    flags = parse_flags(["--ray-address", "10.0.0.5:6379"])
    assert flags.ray and flags.ray_address == "10.0.0.5:6379"
    for bad, needle in ((["--ray-workers", "0"], "1 or more"),
                        (["--ray-address", "nohost"], "HOST:PORT"),
                        (["--ray-address", "h:99999"], "port")):  # fmt: skip
        with pytest.raises(SystemExit):
            parse_flags(bad)
        assert needle in capsys.readouterr().err
