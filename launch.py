#!/usr/bin/env python3
"""One-click launcher: make a virtual environment, install torch and the web UI, start it.

Runs with any Python 3.10+ and the standard library only. Steps:
1. check the command line with the app's own parser (webui/settings.py, stdlib only),
   so that a mistyped flag fails at once, before any install;
2. create `venv/` in the project folder on the first run (env VENV_DIR overrides it;
   VENV_DIR=- uses the current interpreter), like A1111's webui.sh;
3. install torch (env TORCH_COMMAND overrides, as in A1111), then `pip install -e .`;
   a stamp file skips both while pyproject.toml and TORCH_COMMAND are unchanged;
4. check that torch sees the NVIDIA GPU when there is one (--skip-torch-cuda-test);
5. re-execute `<venv python> -m webui.app <all arguments>` (--exit stops before);
   `--ray`, `--ray-workers` or `--ray-address` install the optional extra `ray` first;
   `--test [pytest args]` instead installs the test tools (and ray) (and Debian's Chromium for the
   browser tests, when missing) and runs pytest.

Env COMMANDLINE_ARGS (A1111 habit) adds flags after those of the command line.
This file must never import third-party packages; it may print.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent
# torch and a torchvision built for it (spandrel, the upscaler loader, imports torchvision).
# On x86_64 PyPI's Linux wheels are CUDA builds that also run on the CPU; on aarch64 they
# are CPU builds. TORCH_COMMAND overrides, as in A1111.
TORCH_COMMANDS = {
    "aarch64": "pip install torch==2.9.1 torchvision==0.24.1",
    "arm64": "pip install torch==2.9.1 torchvision==0.24.1",
}
DEFAULT_TORCH_COMMAND = TORCH_COMMANDS.get(
    platform.machine().lower(), "pip install torch==2.14.1 torchvision==0.29.1"
)
STAMP_NAME = ".install-stamp"
IS_WINDOWS = os.name == "nt"


def say(message: str) -> None:
    print(message, flush=True)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def parse_launcher_flags(argv: list[str]) -> argparse.Namespace:
    """The launcher's own flags; everything else is left for the app (lenient)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--exit", "--skip-install", "--skip-prepare-environment", "--reinstall-torch"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--skip-torch-cuda-test", action="store_true")
    parser.add_argument("--use-cpu", nargs="*", default=[])
    args, _ = parser.parse_known_args(argv)
    args.skip_install = args.skip_install or args.skip_prepare_environment
    return args


def check_app_flags(argv: list[str]) -> None:
    """Run the app's flag parser (stdlib only) so that bad flags exit 2 before installing;
    --help prints the app's help here and exits 0."""
    path = ROOT / "webui" / "settings.py"
    spec = importlib.util.spec_from_file_location("_webui_settings", path)
    if spec is None or spec.loader is None:
        fail(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while building Flags
    spec.loader.exec_module(module)
    module.parse_flags(argv, prog="launch.py")


def venv_python(venv_dir: Path) -> Path:
    if IS_WINDOWS:
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def prepare_venv() -> tuple[Path, Path]:
    """Return (python to use, folder of the install stamp), creating venv/ if needed."""
    setting = os.environ.get("VENV_DIR", str(ROOT / "venv"))
    if setting == "-":
        say(f"VENV_DIR=-: using the current interpreter {sys.executable}")
        return Path(sys.executable), ROOT
    venv_dir = Path(setting).expanduser().resolve()
    python = venv_python(venv_dir)
    if python.exists():
        say(f"Using virtual environment in {venv_dir}")
        return python, venv_dir
    say(f"Creating virtual environment in {venv_dir}")
    code = subprocess.call([sys.executable, "-m", "venv", str(venv_dir)])
    if code != 0 or not python.exists():
        fail(
            f"could not create the virtual environment in {venv_dir} (exit code {code}). "
            "On Debian/Ubuntu install the python3-venv package."
        )
    return python, venv_dir


def nvidia_gpu_present() -> bool:
    """True when nvidia-smi exists and runs successfully."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def torch_command(gpu: bool) -> str:
    """TORCH_COMMAND from the environment, else the pinned default; says why."""
    custom = os.environ.get("TORCH_COMMAND")
    if custom:
        say(f"Torch: using TORCH_COMMAND from the environment: {custom}")
        return custom
    if gpu and IS_WINDOWS:
        say(
            "Torch: NVIDIA GPU found, but PyPI's Windows wheels are CPU-only; "
            "set TORCH_COMMAND to install a CUDA build from download.pytorch.org."
        )
    elif gpu:
        say(f"Torch: NVIDIA GPU found (nvidia-smi): '{DEFAULT_TORCH_COMMAND}', a CUDA build.")
    else:
        say(
            f"Torch: no NVIDIA GPU found (no working nvidia-smi): '{DEFAULT_TORCH_COMMAND}', run on the CPU."
        )
    return DEFAULT_TORCH_COMMAND


def run(python: Path, command: list[str], what: str) -> None:
    if command and command[0] == "pip":
        command = [str(python), "-m", *command]
    say(f"{what}: {shlex.join(command)}")
    code = subprocess.call(command, cwd=ROOT)
    if code != 0:
        fail(f"{what} failed (exit code {code}): {shlex.join(command)}")


def stamp_value(python: Path, torch_cmd: str) -> str:
    digest = hashlib.sha256()
    for part in ((ROOT / "pyproject.toml").read_bytes(), torch_cmd.encode(), bytes(python)):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def install(
    python: Path, stamp_dir: Path, gpu: bool, reinstall_torch: bool, extras: str = ""
) -> None:
    """Install torch, then the project with its dependencies, unless the stamp matches."""
    torch_cmd = torch_command(gpu)
    stamp = stamp_dir / STAMP_NAME
    value = stamp_value(python, torch_cmd + extras)
    up_to_date = stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == value
    if up_to_date and not reinstall_torch:
        say(f"Requirements already satisfied (stamp {stamp})")
        return
    stamp.unlink(missing_ok=True)
    run(python, shlex.split(torch_cmd), "Installing torch")
    if not up_to_date:
        target = f"{ROOT}[{extras}]" if extras else str(ROOT)
        run(python, ["pip", "install", "-e", target], "Installing requirements")
    stamp.write_text(value + "\n", encoding="utf-8")


CUDA_CHECK = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"


def torch_cuda_test(python: Path, gpu: bool) -> None:
    """A1111's check: with an NVIDIA GPU, torch in the venv must be able to use it."""
    if not gpu:
        say("No NVIDIA GPU: the web UI will run on the CPU.")
        return
    say("Checking that torch can use the NVIDIA GPU ...")
    code = subprocess.call([str(python), "-c", CUDA_CHECK])
    if code != 0:
        fail(
            "an NVIDIA GPU is present but torch cannot use it (torch.cuda.is_available() is "
            "False). Install a CUDA build of torch (set TORCH_COMMAND, add --reinstall-torch), "
            "or add --skip-torch-cuda-test or --use-cpu all to run on the CPU."
        )


def launch(python: Path, argv: list[str]) -> None:
    """Replace this process with the web UI (a child process on Windows)."""
    say(f"Launching web UI with arguments: {shlex.join(argv)}")
    os.chdir(ROOT)
    command = [str(python), "-m", "webui.app", *argv]
    if IS_WINDOWS:
        raise SystemExit(subprocess.call(command))
    os.execv(command[0], command)


CHROMIUM = Path("/usr/bin/chromium")


def ensure_chromium() -> None:
    """Browser tests drive Debian's Chromium; install it when missing and we may."""
    if CHROMIUM.exists():
        return
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    say("Installing Debian's chromium for the browser tests ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "chromium"]):
        if subprocess.call(command, env=env) != 0:
            fail(f"could not install chromium: {shlex.join(command)} failed")


def run_tests(python: Path, pytest_args: list[str]) -> None:
    """--test: run the test suite in the prepared environment."""
    ensure_chromium()
    command = [str(python), "-m", "pytest", *pytest_args]
    say(f"Running the tests: {shlex.join(command)}")
    os.chdir(ROOT)
    if IS_WINDOWS:
        raise SystemExit(subprocess.call(command))
    os.execv(command[0], command)


RAY_FLAGS = ("--ray", "--ray-workers", "--ray-address")


def install_extras(argv: list[str], *, testing: bool) -> str:
    """The optional extras to install: `test` (and `ray`, which the tests use) for --test,
    `ray` when a Ray flag is given; the default install has none."""
    if testing:
        return "test,ray"
    wants_ray = any(a == f or a.startswith(f + "=") for a in argv for f in RAY_FLAGS)
    return "ray" if wants_ray else ""


def main(argv: list[str] | None = None) -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 - launch.py may run on any python
        fail(f"Python 3.10 or newer is needed, this is {sys.version.split()[0]}")
    if argv is None:
        argv = sys.argv[1:] + shlex.split(os.environ.get("COMMANDLINE_ARGS", ""))
    pytest_args: list[str] | None = None
    if "--test" in argv:  # everything after --test goes to pytest
        at = argv.index("--test")
        argv, pytest_args = argv[:at], argv[at + 1 :]
    args = parse_launcher_flags(argv)
    check_app_flags(argv)
    say(f"Python {sys.version.split()[0]} ({sys.executable})")
    python, stamp_dir = prepare_venv()
    gpu = nvidia_gpu_present()
    if args.skip_install:
        say("Skipping the installation (--skip-install).")
    else:
        extras = install_extras(argv, testing=pytest_args is not None)
        install(python, stamp_dir, gpu, args.reinstall_torch, extras)
    if args.skip_torch_cuda_test or "all" in args.use_cpu:
        say("Skipping the torch CUDA test.")
    else:
        torch_cuda_test(python, gpu)
    if args.exit:
        say("Exiting because of --exit.")
        return
    if pytest_args is not None:
        run_tests(python, pytest_args)
    launch(python, argv)


if __name__ == "__main__":
    main()
