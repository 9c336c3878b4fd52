"""Command-line flags (A1111 names and meanings).

`parse_flags(argv)` turns the command line into a frozen `Flags`. The user options that
A1111 keeps in `config.json` are in `webui.options`.

This module must stay importable with the standard library alone: the launcher loads it
(by file path, before any dependency is installed) to report bad flags early. It must
never import torch, gradio or any other third-party package, and never touch a device.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parent.parent
"""The project folder: the parent of the `webui` package; default for --data-dir."""

DEFAULT_PORT = 7860
DEFAULT_MAX_REQUEST_MB = 64  # base64 images of up to 48 MB; a bigger body answers 413
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PRECISIONS = ("full", "half", "autocast", "bf16")  # bf16: the UNet in bfloat16

# A value meaning "derive from --data-dir / --models-dir" for the path fields of Flags.
_DERIVED: Any = None


# --------------------------------------------------------------------------- flags


def parse_credentials(text: str, source: str | None = None) -> list[tuple[str, str]]:
    """Parse `user:password[,user2:password2]` (newlines count as commas).

    Raises ValueError (prefixed with `source`, e.g. the flag, when given) when an entry
    is not `user:password` or there is none.
    """
    prefix = f"{source}: " if source else ""
    pairs: list[tuple[str, str]] = []
    entries = [e.strip() for e in text.replace("\n", ",").split(",")]
    for number, entry in enumerate((e for e in entries if e), 1):
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:  # the entry is not shown: it may be a password
            raise ValueError(
                f"{prefix}expected user:password[,user2:password2]; entry {number} is not"
            )
        pairs.append((user, password))
    if not pairs:
        raise ValueError(f"{prefix}expected user:password[,user2:password2], got nothing")
    return pairs


@dataclass(frozen=True)
class Flags:
    """Command-line flags, A1111 names with dashes as underscores.

    The directory fields (`models_dir`, `ckpt_dir`, `vae_dir`, `lora_dir`,
    `embeddings_dir`, `styles_file`, `gfpgan_models_path`, `codeformer_models_path`) are always absolute paths once constructed: when
    not given they are derived from `data_dir` (and `models_dir`) like A1111's layout.
    """

    # server
    port: int = DEFAULT_PORT
    listen: bool = False
    server_name: str | None = None
    share: bool = False
    autolaunch: bool = False
    subpath: str | None = None
    tls_keyfile: Path | None = None
    tls_certfile: Path | None = None
    cors_allow_origins: str | None = None
    cors_allow_origins_regex: str | None = None
    max_request_mb: int = DEFAULT_MAX_REQUEST_MB
    # api and auth
    api: bool = False
    nowebui: bool = False
    api_auth: str | None = dataclasses.field(default=None, repr=False)  # passwords: no repr
    gradio_auth: str | None = dataclasses.field(default=None, repr=False)
    gradio_auth_path: Path | None = None
    # paths
    data_dir: Path = PROJECT_DIR
    models_dir: Path = _DERIVED
    ckpt: Path | None = None
    ckpt_dir: Path = _DERIVED
    vae_dir: Path = _DERIVED
    lora_dir: Path = _DERIVED
    embeddings_dir: Path = _DERIVED
    styles_file: Path = _DERIVED
    gfpgan_models_path: Path = _DERIVED
    codeformer_models_path: Path = _DERIVED
    text_encoder_dir: Path = _DERIVED  # Forge's models/text_encoder (FLUX's clip_l, t5xxl)
    module_dirs: tuple[Path, ...] = ()  # more VAE / text encoder folders (ComfyUI's)
    controlnet_dir: Path = _DERIVED
    # devices and memory
    use_cpu: tuple[str, ...] = ()
    no_half: bool = False
    no_half_vae: bool = False
    precision: str = "autocast"
    skip_torch_cuda_test: bool = False
    xformers: bool = False
    opt_sdp_attention: bool = False
    opt_sdp_no_mem_attention: bool = False
    opt_split_attention: bool = False
    medvram: bool = False
    medvram_sdxl: bool = False
    lowvram: bool = False
    lowram: bool = False
    upcast_sampling: bool = False
    opt_channelslast: bool = False
    compile: bool = False
    unet_in_bf16: bool = False  # Forge's name for --precision bf16
    vae_in_bf16: bool = False  # Forge's: the VAE computes in bfloat16 (also on the CPU)
    # behaviour
    disable_safe_unpickle: bool = False
    enable_insecure_extension_access: bool = False
    hide_ui_dir_config: bool = False
    no_hashing: bool = False
    freeze_settings: bool = False
    no_download_sd_model: bool = False
    demo: bool = False
    localization: str | None = None
    log_level: str = "INFO"
    # launcher (accepted by the app too, so that every flag is known)
    exit: bool = False
    skip_install: bool = False
    skip_prepare_environment: bool = False
    reinstall_torch: bool = False
    # cluster (Ray, an optional extra the launcher installs when one of these is given)
    ray: bool = False
    ray_workers: int | None = None
    ray_address: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        set_(self, "api", self.api or self.nowebui)
        set_(self, "ray", self.ray or self.ray_workers is not None or self.ray_address is not None)
        set_(self, "use_cpu", tuple(self.use_cpu))
        set_(self, "module_dirs", tuple(Path(d).expanduser().resolve() for d in self.module_dirs))
        models = self._path_or(self.models_dir, self.data_dir / "models")
        set_(self, "models_dir", models)
        set_(self, "ckpt_dir", self._path_or(self.ckpt_dir, models / "Stable-diffusion"))
        set_(self, "vae_dir", self._path_or(self.vae_dir, models / "VAE"))
        set_(
            self, "text_encoder_dir", self._path_or(self.text_encoder_dir, models / "text_encoder")
        )
        set_(self, "lora_dir", self._path_or(self.lora_dir, models / "Lora"))
        set_(self, "embeddings_dir", self._path_or(self.embeddings_dir, models / "embeddings"))
        set_(self, "styles_file", self._path_or(self.styles_file, self.data_dir / "styles.csv"))
        set_(self, "gfpgan_models_path", self._path_or(self.gfpgan_models_path, models / "GFPGAN"))
        set_(self, "codeformer_models_path",
             self._path_or(self.codeformer_models_path, models / "Codeformer"))  # fmt: skip
        set_(self, "controlnet_dir", self._path_or(self.controlnet_dir, models / "ControlNet"))

    @staticmethod
    def _path_or(value: Path | str | None, default: Path) -> Path:
        return default if value is None else Path(value).expanduser().resolve()

    @property
    def server_host(self) -> str:
        """--server-name if given, else 0.0.0.0 with --listen, else 127.0.0.1."""
        if self.server_name:
            return self.server_name
        return "0.0.0.0" if self.listen else "127.0.0.1"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def esrgan_dir(self) -> Path:
        return self.models_dir / "ESRGAN"

    @property
    def extensions_dir(self) -> Path:
        return self.data_dir / "extensions"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "config.json"

    @property
    def cache_path(self) -> Path:
        return self.data_dir / "cache.json"

    @property
    def cpu_only(self) -> bool:
        """True with `--use-cpu all` (other module names are accepted and ignored)."""
        return "all" in self.use_cpu

    @property
    def webui_enabled(self) -> bool:
        return not self.nowebui

    @property
    def network_exposed(self) -> bool:
        """Reachable from other machines: --listen, --share or a non-loopback --server-name."""
        if self.listen or self.share:
            return True
        name = (self.server_name or "").strip("[]").lower()
        if not name or name == "localhost":
            return False
        try:
            return not ipaddress.ip_address(name).is_loopback
        except ValueError:  # a host name: it may resolve to any address
            return True

    @property
    def disable_extension_access(self) -> bool:
        """A1111 rule: installing extensions is refused when the server is reachable
        from other machines, unless --enable-insecure-extension-access."""
        exposed = self.share or self.listen or bool(self.server_name)
        return exposed and not self.enable_insecure_extension_access

    @property
    def server_folders_allowed(self) -> bool:
        """Batch jobs that read and write folders on the server (img2img Batch, Upscale
        "Batch from Directory"): off with --hide-ui-dir-config, and off while the server
        is reachable from other machines unless --enable-insecure-extension-access."""
        if self.hide_ui_dir_config:
            return False
        return not self.network_exposed or self.enable_insecure_extension_access

    def gradio_credentials(self) -> list[tuple[str, str]]:
        """Users of the web UI from --gradio-auth and the --gradio-auth-path file."""
        pairs = parse_credentials(self.gradio_auth, "--gradio-auth") if self.gradio_auth else []
        if self.gradio_auth_path is not None:
            text = self.gradio_auth_path.read_text(encoding="utf-8")
            pairs += parse_credentials(text, f"--gradio-auth-path {self.gradio_auth_path}")
        return pairs

    def api_credentials(self) -> list[tuple[str, str]]:
        """Users of the REST API from --api-auth (empty: no authentication)."""
        return parse_credentials(self.api_auth, "--api-auth") if self.api_auth else []

    def as_cmd_flags(self) -> dict[str, Any]:
        """JSON-friendly dict with A1111 names, as /sdapi/v1/cmd-flags returns it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) if isinstance(v, Path) else v for v in value]
            out[f.name] = value
        for secret in ("api_auth", "gradio_auth"):
            if out[secret]:
                out[secret] = "***"
        return out


class FlagParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one clear line (with a suggestion) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; run '{self.prog} --help' to list flags\n")

    def known_flags(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]

    def unknown_flag(self, arg: str) -> NoReturn:
        if not arg.startswith("-"):
            self.error(f"unexpected argument {arg!r} (flags start with --)")
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name, self.known_flags(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        self.error(f"unknown flag {name}{hint}")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, got {value}")
    return value


def _credentials(text: str) -> str:
    try:
        parse_credentials(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _megabytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of MB, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more, got {value}")
    return value


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    _port(port)
    return text


_SWITCH: dict[str, Any] = {"action": "store_true"}
_PATH: dict[str, Any] = {"type": Path}
_AUTH: dict[str, Any] = {"type": _credentials, "metavar": "USER:PASS[,USER2:PASS2]"}

# group -> (flag, help, argparse keywords); the order is the order of --help.
_FLAG_TABLE: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "server": [
        ("--port", "port to listen on (7860)", {"type": _port, "default": DEFAULT_PORT}),
        ("--listen", "bind 0.0.0.0: reachable from other machines", _SWITCH),
        ("--server-name", "host name or address to bind", {}),
        ("--share", "public gradio link (not possible offline)", _SWITCH),
        ("--autolaunch", "open a browser tab at start", _SWITCH),
        ("--subpath", "serve under this URL path (behind a reverse proxy)", {}),
        ("--tls-keyfile", "TLS private key file", _PATH),
        ("--tls-certfile", "TLS certificate file", _PATH),
        ("--cors-allow-origins", "comma-separated origins allowed by CORS", {}),
        ("--cors-allow-origins-regex", "regular expression of allowed origins", {}),
        (
            "--max-request-mb",
            f"largest request body in MB, else 413 ({DEFAULT_MAX_REQUEST_MB}; 0: no limit)",
            {"type": _megabytes, "default": DEFAULT_MAX_REQUEST_MB},
        ),
    ],
    "API and authentication": [
        ("--api", "enable the REST API at /sdapi/v1", _SWITCH),
        ("--nowebui", "API only, no web UI (implies --api)", _SWITCH),
        ("--api-auth", "users of the API", _AUTH),
        ("--gradio-auth", "users of the web UI", _AUTH),
        ("--gradio-auth-path", "file of web UI users, user:pass per line or comma", _PATH),
    ],
    "paths": [
        ("--data-dir", "base folder of models/, outputs/, config.json", {"type": Path}),
        ("--models-dir", "models folder (<data-dir>/models)", _PATH),
        ("--ckpt", "checkpoint to load at start", _PATH),
        ("--ckpt-dir", "checkpoints folder (<models-dir>/Stable-diffusion)", _PATH),
        ("--vae-dir", "VAE folder (<models-dir>/VAE)", _PATH),
        ("--lora-dir", "LoRA folder (<models-dir>/Lora)", _PATH),
        ("--embeddings-dir", "textual inversion folder (<models-dir>/embeddings)", _PATH),
        ("--styles-file", "styles CSV file (<data-dir>/styles.csv)", _PATH),
        ("--gfpgan-models-path", "GFPGAN and face detector files (<models-dir>/GFPGAN)", _PATH),
        ("--codeformer-models-path", "CodeFormer model file (<models-dir>/Codeformer)", _PATH),
        ("--text-encoder-dir", "text encoder folder (<models-dir>/text_encoder)", _PATH),
        (
            "--module-dirs",
            "more VAE / text encoder folders, e.g. ComfyUI's models/vae models/text_encoders",
            {"nargs": "+", "type": Path, "metavar": "DIR"},
        ),
        ("--controlnet-dir", "ControlNet models folder (<models-dir>/ControlNet)", _PATH),
    ],
    "devices and memory": [
        ("--use-cpu", "'all' runs everything on the CPU", {"nargs": "+", "metavar": "MODULE"}),
        ("--no-half", "keep the model in float32", _SWITCH),
        ("--no-half-vae", "keep the VAE in float32", _SWITCH),
        ("--precision", "evaluation precision", {"choices": PRECISIONS, "default": "autocast"}),
        ("--skip-torch-cuda-test", "do not check that torch can use the GPU", _SWITCH),
        ("--xformers", "use xformers attention", _SWITCH),
        ("--opt-sdp-attention", "use scaled dot product attention", _SWITCH),
        (
            "--opt-sdp-no-mem-attention",
            "SDP attention without the memory-efficient kernel",
            _SWITCH,
        ),
        ("--opt-split-attention", "split attention to save memory", _SWITCH),
        ("--medvram", "offload model parts to the CPU to save VRAM", _SWITCH),
        ("--medvram-sdxl", "--medvram for SDXL models only", _SWITCH),
        ("--lowvram", "aggressive offloading for very small VRAM", _SWITCH),
        ("--lowram", "one checkpoint in RAM; on the CPU fp16 weights in RAM", _SWITCH),
        ("--upcast-sampling", "fp16 UNet with fp32 sampling (GPU)", _SWITCH),
        ("--opt-channelslast", "channels-last memory format for the UNet", _SWITCH),
        ("--compile", "torch.compile the UNet (slow first image)", _SWITCH),
        ("--unet-in-bf16", "the UNet in bfloat16 (Forge's name; = --precision bf16)", _SWITCH),
        ("--vae-in-bf16", "the VAE in bfloat16 (Forge's; 2x faster CPU decodes)", _SWITCH),
    ],
    "behaviour": [
        ("--disable-safe-unpickle", "allow arbitrary code in .ckpt/.pt pickles", _SWITCH),
        (
            "--enable-insecure-extension-access",
            "allow extension installs and folder batches with --listen",
            _SWITCH,
        ),
        ("--hide-ui-dir-config", "no batch jobs on server folders", _SWITCH),
        ("--no-hashing", "do not compute model file hashes", _SWITCH),
        ("--freeze-settings", "make settings read-only", _SWITCH),
        ("--no-download-sd-model", "do not download a default checkpoint", _SWITCH),
        ("--demo", "create a small random-weight model to try the UI", _SWITCH),
        ("--localization", "UI localization name", {}),
        ("--log-level", "one of " + ", ".join(LOG_LEVELS), {"type": _log_level, "default": "INFO"}),
    ],
    "cluster (Ray)": [
        ("--ray", "run jobs on a local Ray runtime, one worker per GPU", _SWITCH),
        (
            "--ray-workers",
            "N CPU workers per machine instead (implies --ray)",
            {"type": _positive, "metavar": "N"},
        ),
        (
            "--ray-address",
            "join the Ray cluster at HOST:PORT (implies --ray)",
            {"type": _host_port, "metavar": "HOST:PORT"},
        ),
    ],
    "launcher (launch.py)": [
        ("--exit", "install the dependencies, then exit", _SWITCH),
        ("--skip-install", "do not install anything", _SWITCH),
        ("--skip-prepare-environment", "same as --skip-install", _SWITCH),
        ("--reinstall-torch", "run the torch install again", _SWITCH),
    ],
}


def build_parser(prog: str = "launch.py") -> FlagParser:
    parser = FlagParser(
        prog=prog,
        usage="%(prog)s [flags]",
        description="Stable Diffusion web UI (A1111-compatible flags).",
        allow_abbrev=False,
    )
    for title, flags in _FLAG_TABLE.items():
        group = parser.add_argument_group(title)
        for flag, text, kwargs in flags:
            group.add_argument(flag, help=text, **kwargs)
    parser.set_defaults(data_dir=PROJECT_DIR, use_cpu=[], module_dirs=[])
    return parser


def _check(parser: FlagParser, ns: argparse.Namespace) -> None:
    """Checks that involve more than one flag or the file system."""
    if (ns.tls_keyfile is None) != (ns.tls_certfile is None):
        parser.error("--tls-keyfile and --tls-certfile must be given together")
    for flag in ("tls_keyfile", "tls_certfile", "gradio_auth_path"):
        path = getattr(ns, flag)
        if path is not None and not path.is_file():
            parser.error(f"--{flag.replace('_', '-')}: file not found: {path}")
    if ns.gradio_auth_path is not None:
        source = f"--gradio-auth-path {ns.gradio_auth_path}"
        try:
            parse_credentials(ns.gradio_auth_path.read_text(encoding="utf-8"), source)
        except (ValueError, OSError) as exc:
            parser.error(str(exc) if isinstance(exc, ValueError) else f"{source}: {exc}")
    if ns.subpath is not None:
        ns.subpath = "/" + ns.subpath.strip("/")
    if ns.cors_allow_origins_regex is not None:
        try:
            re.compile(ns.cors_allow_origins_regex)
        except re.error as exc:
            parser.error(f"--cors-allow-origins-regex: not a regular expression: {exc}")


def parse_flags(argv: Sequence[str] | None = None, prog: str = "launch.py") -> Flags:
    """Parse command-line flags (sys.argv[1:] when argv is None).

    Unknown or malformed flags print one line naming the flag (with the closest known
    flag when there is one) and exit with code 2, like argparse.
    """
    parser = build_parser(prog)
    ns, extra = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if extra:
        parser.unknown_flag(extra[0])
    _check(parser, ns)
    return Flags(**vars(ns))
