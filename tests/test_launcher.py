"""Tests of launch.py, the one-click launcher (venv, torch and requirements, re-exec).

The fast tests run the launcher on a small copy of the project with VENV_DIR=- and
--skip-install, or call its functions with `run` replaced. The slow test does the real
first-run install into a fresh venv with the system Python.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="uses shell scripts")
FAKE_APP = "import sys\nprint('APP ARGS', sys.argv[1:])\n"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without launcher settings or traces of an active venv."""
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    venv_bin = str(Path(sys.prefix) / ("Scripts" if os.name == "nt" else "bin"))
    paths = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in paths if p != venv_bin)
    env.update(extra)
    return env


_DROPPED = {"VENV_DIR", "TORCH_COMMAND", "COMMANDLINE_ARGS", "VIRTUAL_ENV", "PYTHONPATH"}


@pytest.fixture
def small_copy(tmp_path: Path) -> Path:
    """launch.py, pyproject.toml and webui/settings.py, with a fake webui/app.py."""
    root = tmp_path / "project"
    (root / "webui").mkdir(parents=True)
    shutil.copy2(ROOT / "launch.py", root)
    shutil.copy2(ROOT / "pyproject.toml", root)
    shutil.copy2(ROOT / "webui" / "settings.py", root / "webui")
    (root / "webui" / "__init__.py").write_text("")
    (root / "webui" / "app.py").write_text(FAKE_APP)
    return root


def run_launcher(
    root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "launch.py"), *args],
        capture_output=True,
        text=True,
        cwd=root,
        env=env if env is not None else clean_env(VENV_DIR="-"),
        timeout=timeout,
    )


def load_launcher(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_launch_under_test", ROOT / "launch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in _DROPPED:
        monkeypatch.delenv(name, raising=False)
    return module


# ------------------------------------------------------------------- fast tests


def test_skip_install_exit(small_copy: Path) -> None:
    proc = run_launcher(small_copy, "--skip-install", "--exit")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "VENV_DIR=-: using the current interpreter" in out
    assert "Skipping the installation (--skip-install)." in out
    assert "Exiting because of --exit." in out
    assert "APP ARGS" not in out
    assert not (small_copy / "venv").exists()


def test_skip_prepare_environment_is_an_alias(small_copy: Path) -> None:
    proc = run_launcher(small_copy, "--skip-prepare-environment", "--exit")
    assert proc.returncode == 0, proc.stderr
    assert "Skipping the installation" in proc.stdout


def test_forwards_all_arguments_to_the_app(small_copy: Path) -> None:
    env = clean_env(VENV_DIR="-", COMMANDLINE_ARGS="--api --log-level debug")
    proc = run_launcher(small_copy, "--skip-install", "--port", "7861", "--listen", env=env)
    assert proc.returncode == 0, proc.stderr
    expected = ["--skip-install", "--port", "7861", "--listen", "--api", "--log-level", "debug"]
    assert "Launching web UI with arguments: --skip-install --port 7861 --listen" in proc.stdout
    assert f"APP ARGS {expected!r}" in proc.stdout


def test_unknown_flag_fails_before_installing(small_copy: Path) -> None:
    proc = run_launcher(small_copy, "--xformer", "--exit", env=clean_env())
    assert proc.returncode == 2
    assert "unknown flag --xformer (did you mean --xformers?)" in proc.stderr
    assert "--help" in proc.stderr
    assert not (small_copy / "venv").exists()  # nothing was created


def test_help_lists_app_flags_without_installing(small_copy: Path) -> None:
    proc = run_launcher(small_copy, "--help", env=clean_env())
    assert proc.returncode == 0
    for flag in ("--listen", "--ckpt-dir", "--skip-install", "--reinstall-torch"):
        assert flag in proc.stdout
    assert not (small_copy / "venv").exists()


def fake_program(path: Path, exit_code: int) -> Path:
    path.write_text(f"#!/bin/sh\nexit {exit_code}\n")
    path.chmod(0o755)
    return path


@POSIX_ONLY
def test_gpu_detection_uses_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = load_launcher(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not launcher.nvidia_gpu_present()  # no nvidia-smi
    fake_program(tmp_path / "nvidia-smi", 9)
    assert not launcher.nvidia_gpu_present()  # nvidia-smi that fails (no driver)
    fake_program(tmp_path / "nvidia-smi", 0)
    assert launcher.nvidia_gpu_present()


@POSIX_ONLY
def test_cuda_test_fails_clearly_when_gpu_is_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    launcher = load_launcher(monkeypatch)
    python = fake_program(tmp_path / "python", 3)  # a venv whose torch sees no GPU
    monkeypatch.setattr(launcher, "prepare_venv", lambda: (python, tmp_path))
    monkeypatch.setattr(launcher, "nvidia_gpu_present", lambda: True)
    with pytest.raises(SystemExit) as exc_info:
        launcher.main(["--skip-install", "--exit"])
    assert exc_info.value.code == 1
    err = capsys.readouterr().err
    assert "torch cannot use it" in err
    assert "--skip-torch-cuda-test" in err and "--use-cpu all" in err
    for flags in (["--skip-torch-cuda-test"], ["--use-cpu", "all"]):
        launcher.main(["--skip-install", "--exit", *flags])
        assert "Skipping the torch CUDA test." in capsys.readouterr().out
    monkeypatch.setattr(launcher, "prepare_venv", lambda: (Path(sys.executable), tmp_path))
    monkeypatch.setattr(launcher, "CUDA_CHECK", "pass")  # torch sees the GPU
    launcher.main(["--skip-install", "--exit"])
    assert "Exiting because of --exit." in capsys.readouterr().out


def test_install_steps_and_stamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = load_launcher(monkeypatch)
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(launcher, "run", lambda py, cmd, what: calls.append((what, cmd)))
    python = Path(sys.executable)

    launcher.install(python, tmp_path, gpu=False, reinstall_torch=False)
    assert calls == [
        ("Installing torch", launcher.DEFAULT_TORCH_COMMAND.split()),
        ("Installing requirements", ["pip", "install", "-e", str(launcher.ROOT)]),
    ]
    assert (tmp_path / ".install-stamp").is_file()

    calls.clear()
    launcher.install(python, tmp_path, gpu=False, reinstall_torch=False)
    assert calls == []  # stamp matches: nothing to do

    launcher.install(python, tmp_path, gpu=False, reinstall_torch=True)
    assert [what for what, _ in calls] == ["Installing torch"]

    calls.clear()
    monkeypatch.setenv("TORCH_COMMAND", "pip install torch==2.13.0 --no-deps")
    launcher.install(python, tmp_path, gpu=True, reinstall_torch=False)
    assert calls[0] == ("Installing torch", ["pip", "install", "torch==2.13.0", "--no-deps"])
    assert [what for what, _ in calls] == ["Installing torch", "Installing requirements"]


def test_ray_flags_and_tests_install_the_ray_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    launcher = load_launcher(monkeypatch)
    assert launcher.install_extras([], testing=False) == ""  # the default install: no ray
    assert launcher.install_extras(["--listen"], testing=False) == ""
    for argv in (["--ray"], ["--ray-workers", "2"], ["--ray-address=10.0.0.1:6379"]):
        assert launcher.install_extras(argv, testing=False) == "ray"
    assert launcher.install_extras([], testing=True) == "test,ray"  # CI runs the Ray tests
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(launcher, "run", lambda py, cmd, what: calls.append((what, cmd)))
    launcher.install(Path(sys.executable), tmp_path, gpu=False, reinstall_torch=False, extras="ray")
    assert calls[-1] == (
        "Installing requirements",
        ["pip", "install", "-e", f"{launcher.ROOT}[ray]"],
    )


def test_failed_install_leaves_no_stamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = load_launcher(monkeypatch)

    def failing_run(python: Path, command: list[str], what: str) -> None:
        if what == "Installing requirements":
            raise SystemExit(1)

    monkeypatch.setattr(launcher, "run", failing_run)
    with pytest.raises(SystemExit):
        launcher.install(Path(sys.executable), tmp_path, gpu=False, reinstall_torch=False)
    assert not (tmp_path / ".install-stamp").exists()


def test_torch_command_explains_choice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    launcher = load_launcher(monkeypatch)
    assert launcher.torch_command(gpu=False) == launcher.DEFAULT_TORCH_COMMAND
    assert "no NVIDIA GPU" in capsys.readouterr().out
    assert launcher.torch_command(gpu=True) == launcher.DEFAULT_TORCH_COMMAND
    assert "NVIDIA GPU found" in capsys.readouterr().out
    monkeypatch.setenv("TORCH_COMMAND", "pip install torch==2.13.0+cpu")
    assert launcher.torch_command(gpu=True) == "pip install torch==2.13.0+cpu"
    assert "TORCH_COMMAND" in capsys.readouterr().out


# -------------------------------------------------------------------- slow test


def system_python() -> str:
    """A Python outside any virtual environment (the one a user would type)."""
    base = getattr(sys, "_base_executable", None)
    if base and Path(base).exists() and sys.prefix != sys.base_prefix:
        return base
    return sys.executable if sys.prefix == sys.base_prefix else shutil.which("python3") or ""


IGNORED = shutil.ignore_patterns(
    "venv", ".venv", ".git", "models", "outputs", "__pycache__", "*.egg-info", ".*_cache",
    "config.json", "cache.json", ".install-stamp", "build", "dist",
)  # fmt: skip


@pytest.mark.slow
def test_first_run_creates_venv_and_installs_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "webui-copy"
    shutil.copytree(ROOT, root, ignore=IGNORED)
    python = system_python()
    assert python, "no system python3 found"
    start = time.monotonic()
    proc = subprocess.run(
        [python, "launch.py", "--exit"],
        cwd=root,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=25 * 60,
    )
    elapsed = time.monotonic() - start
    print(f"first run of launch.py --exit took {elapsed:.0f} s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for line in ("Creating virtual environment in", "Installing torch", "Installing requirements"):
        assert line in proc.stdout
    venv_python = root / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    assert venv_python.exists()
    assert (root / "venv" / ".install-stamp").is_file()
    check = subprocess.run(
        [
            str(venv_python),
            "-c",
            "import webui, torch, torchvision, diffusers, gradio; print(torch.__version__)",
        ],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stderr
    launcher = load_launcher(monkeypatch)
    assert check.stdout.startswith(launcher.DEFAULT_TORCH_COMMAND.split("==")[1].split()[0])

    again = subprocess.run(
        [python, "launch.py", "--exit"], cwd=root, env=clean_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "Using virtual environment in" in again.stdout
    assert "Requirements already satisfied (stamp" in again.stdout
