"""The user options A1111's config.json holds: each one's key, default, validator,
section (`SECTIONS`: A1111's titles) and label, and what the Settings tab needs to pick
its widget: choices (fixed, or a callable listing checkpoints, VAEs, languages), bounds
and a slider step (`OptionDef`, `OPTION_DEFS`). `webui.options.Options` holds the values.

Like settings.py, this module must stay importable with the standard library alone
(launch.py's flag check imports it): the choice callables import what they need on use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _int_range(low: int, high: int | None = None) -> Callable[[Any], int]:
    def validate(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return validate


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _float_range(low: float, high: float) -> Callable[[Any], float]:
    """A number in [low, high] (the settings form sends text)."""

    def validate(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not low <= number <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {value!r}")
        return number

    return validate


_ratio = _float_range(0.0, 0.9)


def _pattern(value: Any) -> str:
    """A file or folder name pattern whose tokens are all known ([seed], [date], ...)."""
    from .imaging.filename_pattern import check_filename_pattern  # standard library only

    return check_filename_pattern(_string(value))


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _keys(value: Any) -> list[str]:
    """A list of option keys (the quick-settings bar); unknown keys are skipped where the
    list is used, so that an option of an extension that is gone breaks nothing."""
    if isinstance(value, str):  # A1111 <= 1.5 stored "a, b" in quicksettings
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of option names, got {value!r}")
    return list(dict.fromkeys(value))


def _number(low: float, high: float) -> Callable[[Any], float]:
    def validate(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {value!r}")
        return float(value)

    return validate


def _choice(*choices: str) -> Callable[[Any], str]:
    def validate(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return validate


Choices = Sequence[str] | Callable[[Any], Sequence[str]]

SECTIONS: dict[str, str] = {  # section key -> title, in the order the Settings tab shows them
    "sd": "Stable Diffusion",
    "sd_vae": "VAE",
    "optimizations": "Optimizations",
    "img2img": "img2img",
    "sampler-params": "Sampler parameters",
    "ui": "User interface",
    "queue": "Queue",
    "saving-images": "Saving images/grids",
    "saving-paths": "Paths for saving",
    "interrogate": "Interrogate",
    "model-downloads": "Model downloads",
    "face-restoration": "Face restoration",
    "sdxl": "Stable Diffusion XL",
    "control_net": "ControlNet",
    "speed": "Speed",  # token merging and the denoiser caches (webui.core.speed)
    "training": "Training",  # LoRA and textual-inversion training (webui.core.train_yield)
}


@dataclass(frozen=True)
class OptionDef:
    """One user option: its key in config.json, default, validator, label and section,
    and what the Settings tab needs to pick its widget (see `widget`).

    `choices`: the values to pick from, or a callable that is given the AppContext and
    returns them (checkpoints, VAEs, languages: asked on every page load).
    `minimum`/`maximum`/`step`: bounds of a number (the validator's); with all three the
    number is a slider. `path`: the value names a file or folder; it cannot be changed
    while the server is reachable from other machines (see `Options.from_flags`).
    """

    key: str
    default: Any
    validate: Callable[[Any], Any]
    label: str
    section: str
    path: bool = False
    secret: bool = False  # an API key or token: never shown outside the server (SECRET_SHOWN)
    choices: Choices | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None

    @property
    def widget(self) -> str:
        """checkbox, dropdown, multiselect, slider, number or textbox."""
        if isinstance(self.default, bool):
            return "checkbox"
        if isinstance(self.default, list):
            return "multiselect"
        if self.choices is not None:
            return "dropdown"
        if isinstance(self.default, int | float):
            bounded = None not in (self.minimum, self.maximum, self.step)
            return "slider" if bounded else "number"
        return "textbox"

    def choices_for(self, ctx: Any) -> list[str]:
        """The current choices (empty for an option without choices)."""
        if self.choices is None:
            return []
        found = self.choices(ctx) if callable(self.choices) else self.choices
        return [str(c) for c in found]

    def normalized(self, value: Any) -> Any:
        """A control's value in the option's type (a Number sends 3.0 for 3, a text box
        "0.5"); left as it is when it does not convert, for the validator to refuse."""
        if isinstance(self.default, bool):
            return value if value is None else bool(value)
        if isinstance(self.default, int | float) and isinstance(value, str | int | float):
            try:
                number = float(value)
            except ValueError:
                return value
            if isinstance(self.default, int) and number.is_integer():
                return int(number)
            return number
        if isinstance(self.default, str):
            return "" if value is None else value
        if isinstance(self.default, list) and isinstance(value, list | tuple | type(None)):
            return list(value or ())
        return value


def _checkpoint_titles(ctx: Any) -> list[str]:
    return [info.title for info in ctx.models.checkpoints()]


def _vae_names(ctx: Any) -> list[str]:
    networks = getattr(ctx, "networks", None)
    return networks.vaes.choices() if networks is not None else ["Automatic", "None"]


def _module_names(ctx: Any) -> list[str]:
    """The files of the VAE and text encoder folders (Forge's module list)."""
    module_files = getattr(getattr(ctx, "models", None), "module_files", None)
    return module_files.names() if module_files is not None else []


def _languages(ctx: Any) -> list[str]:
    """ "Auto" and the names of the language files: the UI's (webui/ui/localizations, read
    by `webui.ui.i18n`) and those of active extensions (their localizations folders)."""
    folders = [Path(__file__).parent / "ui" / "localizations"]
    for record in getattr(getattr(ctx, "extensions", None), "records", []):
        if record.active and record.path is not None:
            folders.append(record.path / "localizations")
    names = {path.stem for folder in folders if folder.is_dir() for path in folder.glob("*.json")}
    return ["Auto", *sorted(names)]


def _http_url(value: Any) -> str:
    value = _string(value).strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        raise ValueError(f"expected an http(s):// address, got {value!r}")
    return value


def _option_keys(ctx: Any) -> list[str]:
    return list(ctx.options.definitions)


def _names(value: Any) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of names, got {value!r}")
    return list(dict.fromkeys(value))


def _interrogate_categories(ctx: Any) -> list[str]:
    """The CLIP category lists: models/interrogate/*.txt."""
    folder = Path(ctx.flags.models_dir) / "interrogate"
    return sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []


def _int(low: int, high: int | None = None, step: int | None = None) -> dict[str, Any]:
    return {"validate": _int_range(low, high), "minimum": low, "maximum": high, "step": step}


def _float(low: float, high: float, step: float) -> dict[str, Any]:
    return {"validate": _float_range(low, high), "minimum": low, "maximum": high, "step": step}


_LIMIT_LABEL = "Maximum number of checkpoints loaded at the same time"
_FORMATS = ("png", "jpg", "jpeg", "webp")
_TE_RELEASE = ("Auto", "Always", "Never")  # model_manager.text_encoder_release
_PREVIEW_METHODS = ("Full", "Approx NN", "Approx cheap", "TAESD")  # A1111's (core/previews.py)
_DECODE_METHODS = ("Full", "TAESD")  # A1111's sd_vae_decode_method
OPTION_DEFS: tuple[OptionDef, ...] = (
    OptionDef("sd_model_checkpoint", "", _string, "Stable Diffusion checkpoint", "sd",
              choices=_checkpoint_titles),
    OptionDef("sd_checkpoints_limit", 1, label=_LIMIT_LABEL, section="sd", **_int(1)),
    OptionDef("sd_vae", "Automatic", _string, "SD VAE", "sd", choices=_vae_names),
    OptionDef("CLIP_stop_at_last_layers", 1, label="Clip skip", section="sd", **_int(1, 12, 1)),
    OptionDef("vae_tiling_threshold", 1536, section="optimizations", **_int(0, 16384),
              label="Decode with VAE tiling from width x height of this size squared (0: never)"),
    OptionDef("vae_slicing_threshold", 1024, section="optimizations", **_int(0, 16384),
              label="Decode a batch image by image from this size squared in total (0: never)"),
    OptionDef("oom_retry_lower_memory", True, _bool,
              "Retry with lower memory after running out of memory (once)", "optimizations"),
    OptionDef("token_merging_ratio", 0.0, _ratio,
              "Token merging ratio (tomesd; 0: off): faster, slightly different images",
              "speed", minimum=0.0, maximum=0.9, step=0.1),
    OptionDef("deepcache_interval", 0, label="DeepCache: compute the whole UNet every N "
              "steps, only its outer layers in between (0 or 1: off): faster, slightly "
              "different images", section="speed", **_int(0, 10, 1)),
    OptionDef("deepcache_branch", 0, label="DeepCache branch: how deep the part computed "
              "every step reaches (0: least, fastest; SD 1.x/2.x up to 11, SDXL up to 8)",
              section="speed", **_int(0, 11, 1)),
    OptionDef("first_block_cache_threshold", 0.0, label="First Block Cache (FLUX): skip the "
              "transformer's other blocks while its first block's output changes less than "
              "this (0: off; 0.05 to 0.2): faster, slightly different images",
              section="speed", **_float(0.0, 1.0, 0.01)),
    OptionDef("taylorseer_interval", 0, label="TaylorSeer (FLUX): compute the attention "
              "layers every N steps, predict them in between (0 or 1: off; First Block Cache "
              "wins when both are set): faster, slightly different images",
              section="speed", **_int(0, 10, 1)),
    OptionDef("initial_noise_multiplier", 1.0, _float_range(0.0, 1.5),
              "Noise multiplier for img2img", "img2img", minimum=0.0, maximum=1.5, step=0.001),
    OptionDef("img2img_extra_noise", 0.0, _float_range(0.0, 1.0),
              "Extra noise multiplier for img2img and hires fix (0: off; keep it below the "
              "denoising strength)", "img2img", minimum=0.0, maximum=1.0, step=0.01),
    OptionDef("s_min_uncond", 0.0, label="Negative Guidance minimum sigma: skip the negative "
              "prompt for some steps when the image is almost ready (0: off)",
              section="optimizations", **_float(0.0, 15.0, 0.01)),
    OptionDef("s_min_uncond_all", False, _bool, "Negative Guidance minimum sigma all steps "
              "(off: every other step)", "optimizations"),
    # model_manager.text_encoder_release: FLUX.1's / SD 3.5's T5-XXL, Z-Image's Qwen3
    OptionDef("text_encoder_release", "Auto", _choice(*_TE_RELEASE), "Free the big text "
              "encoder (T5-XXL, Qwen3) once the prompts are encoded, reload it for the next "
              "job (Auto: when this machine has less than 48 GB of RAM and it is over 1 GB)",
              "optimizations", choices=_TE_RELEASE),
    # A1111's Sampler parameters (`webui.core.sampler_params`: which sampler honours which)
    OptionDef("eta_ddim", 0.0, label="Eta for DDIM", section="sampler-params",
              **_float(0.0, 1.0, 0.01)),
    OptionDef("eta_ancestral", 1.0, label="Eta for k-diffusion samplers (ancestral and SDE)",
              section="sampler-params", **_float(0.0, 1.0, 0.01)),
    OptionDef("s_churn", 0.0, label="sigma churn", section="sampler-params",
              **_float(0.0, 100.0, 0.01)),
    OptionDef("s_tmin", 0.0, label="sigma tmin", section="sampler-params",
              **_float(0.0, 10.0, 0.01)),
    OptionDef("s_tmax", 0.0, label="sigma tmax (0: infinity)", section="sampler-params",
              **_float(0.0, 999.0, 0.01)),
    OptionDef("s_noise", 1.0, label="sigma noise", section="sampler-params",
              **_float(0.0, 1.1, 0.001)),
    OptionDef("eta_tcd", 0.3, label="Gamma for TCD (its eta: 0 deterministic, 1 more noise)",
              section="sampler-params", **_float(0.0, 1.0, 0.01)),
    OptionDef("show_progress_every_n_steps", 3, label="Live preview every N steps (0: off)",
              section="ui", **_int(0)),
    # Forge's top bar: the checkpoint, then "VAE / Text Encoder" (FLUX, SD 3.5, Z-Image modules)
    OptionDef("quicksettings_list", ["sd_model_checkpoint", "forge_additional_modules", "sd_vae",
                                     "CLIP_stop_at_last_layers"],
              _keys, "Quicksettings list (settings shown on top of the page; applies after a "
              "restart)", "ui", choices=_option_keys),
    OptionDef("notification_audio", False, _bool,
              "Play a sound when a job of this page finishes", "ui"),
    OptionDef("notification_min_seconds", 10.0, _number(0, 3600), section="ui",
              label="Only for jobs that took at least this many seconds", minimum=0,
              maximum=3600),
    OptionDef("notification_volume", 100, label="Notification sound volume (%)", section="ui",
              **_int(0, 100, 1)),
    OptionDef("keyedit_precision_attention", 0.1, _number(0.01, 0.2),
              "Ctrl+up/down precision when editing (attention:1.1)", "ui",
              minimum=0.01, maximum=0.2, step=0.001),
    OptionDef("keyedit_precision_extra", 0.05, _number(0.01, 0.2),
              "Ctrl+up/down precision when editing <extra networks:0.9>", "ui",
              minimum=0.01, maximum=0.2, step=0.001),
    OptionDef("localization", "Auto", _string,
              "UI language: Auto (the browser's), en or zh_CN; applies after a restart", "ui",
              choices=_languages),
    OptionDef("queue_limit_per_user", 10, section="queue", **_int(0),
              label="Most jobs one user may have waiting or running (0: no limit)"),
    OptionDef("queue_show_others_prompts", False, _bool,
              "Show other users' prompts in the queue (off: only their mode and progress)",
              "queue"),
    OptionDef("show_progress_type", "Approx cheap", _choice(*_PREVIEW_METHODS),
              "Live preview method (Full: decoded with the VAE, slower; Approx NN and TAESD: "
              "small decoders from models/VAE-approx)", "ui", choices=_PREVIEW_METHODS),
    OptionDef("return_grid", True, _bool, "Show grid in gallery", "ui"),
    OptionDef("samples_format", "png", _choice(*_FORMATS), "File format for images",
              "saving-images", choices=_FORMATS),
    OptionDef("samples_filename_pattern", "", _pattern,
              "Images filename pattern (empty: NNNNN-seed)", "saving-images"),
    OptionDef("save_images_add_number", True, _bool, "Add number to filename when saving",
              "saving-images"),
    OptionDef("grid_save", True, _bool, "Always save all generated image grids",
              "saving-images"),
    OptionDef("grid_format", "png", _choice(*_FORMATS), "File format for grids",
              "saving-images", choices=_FORMATS),
    OptionDef("grid_only_if_multiple", True, _bool,
              "Do not save grids consisting of one picture", "saving-images"),
    OptionDef("n_rows", -1, section="saving-images", **_int(-1, 16, 1),
              label="Grid row count; use -1 for autodetect and 0 for it to be same as batch size"),
    OptionDef("jpeg_quality", 80, label="Quality for saved jpeg and webp images",
              section="saving-images", **_int(1, 100, 1)),
    OptionDef("webp_lossless", False, _bool, "Use lossless compression for webp images",
              "saving-images"),
    OptionDef("save_to_dirs", True, _bool, "Save images to a subdirectory", "saving-paths"),
    OptionDef("grid_save_to_dirs", True, _bool, "Save grids to a subdirectory", "saving-paths"),
    OptionDef("directories_filename_pattern", "[date]", _pattern,
              "Directory name pattern (/ makes nested folders)", "saving-paths"),
    OptionDef("outdir_samples", "", _string,
              "Output folder for images (empty: the default folders)", "saving-paths", path=True),
    OptionDef("outdir_save", "", _string,
              "Directory for saving images using the Save button (empty: outputs/saved)",
              "saving-paths", path=True),
    OptionDef("interrogate_keep_models_in_memory", False, _bool, "Keep models in VRAM",
              "interrogate"),
    OptionDef("interrogate_return_ranks", False, _bool,
              "Include ranks of model tags matches in results.", "interrogate"),
    OptionDef("interrogate_clip_num_beams", 1, label="BLIP: num_beams", section="interrogate",
              **_int(1, 16, 1)),
    OptionDef("interrogate_clip_min_length", 24, label="BLIP: minimum description length",
              section="interrogate", **_int(1, 128, 1)),
    OptionDef("interrogate_clip_max_length", 48, label="BLIP: maximum description length",
              section="interrogate", **_int(1, 256, 1)),
    OptionDef("interrogate_clip_dict_limit", 1500, section="interrogate", **_int(0),
              label="CLIP: maximum number of lines in text file (0 = No limit)"),
    OptionDef("interrogate_clip_skip_categories", [], _names, "CLIP: skip inquire categories",
              "interrogate", choices=_interrogate_categories),
    OptionDef("interrogate_deepbooru_score_threshold", 0.5, label="deepbooru: score threshold",
              section="interrogate", **_float(0.0, 1.0, 0.01)),
    OptionDef("deepbooru_sort_alpha", True, _bool, "deepbooru: sort tags alphabetically",
              "interrogate"),
    OptionDef("deepbooru_use_spaces", True, _bool, "deepbooru: use spaces in tags",
              "interrogate"),
    OptionDef("deepbooru_escape", True, _bool, "deepbooru: escape (\\) brackets", "interrogate"),
    OptionDef("deepbooru_filter_tags", "", _string,
              "deepbooru: filter out those tags (comma-separated)", "interrogate"),
    OptionDef("interrogate_wd14_model", "", _string,
              "WD14 tagger: model folder in models/interrogate (empty: the first one)",
              "interrogate"),
    OptionDef("interrogate_wd14_general_threshold", 0.35, section="interrogate",
              label="WD14 tagger: general tags threshold", **_float(0.0, 1.0, 0.01)),
    OptionDef("interrogate_wd14_character_threshold", 0.85, section="interrogate",
              label="WD14 tagger: character tags threshold", **_float(0.0, 1.0, 0.01)),
    OptionDef("image_browser_folders", "", _string,
              "Image Browser: more folders to index, separated by ;", "saving-paths", path=True),
    OptionDef("civitai_api_key", "", _string, "Civitai API key (for downloads that need a login)",
              "model-downloads", secret=True),
    OptionDef("huggingface_token", "", _string, "Hugging Face token (for gated repositories)",
              "model-downloads", secret=True),
    OptionDef("huggingface_base_url", "https://huggingface.co", _http_url,
              "Hugging Face address (a mirror works too)", "model-downloads"),
    OptionDef("civitai_base_url", "https://civitai.com", _http_url, "Civitai address",
              "model-downloads"),
    OptionDef("face_restoration_model", "CodeFormer", _choice("CodeFormer", "GFPGAN"),
              "Face restoration model", "face-restoration", choices=("CodeFormer", "GFPGAN")),
    OptionDef("code_former_weight", 0.5, label="CodeFormer weight (0 = maximum effect, 1 = "
              "minimum effect)", section="face-restoration", **_float(0.0, 1.0, 0.001)),
    # the SDXL refiner's aesthetic-score conditioning (webui.core.refiner)
    OptionDef("sdxl_refiner_low_aesthetic_score", 2.5, label="SDXL low aesthetic score (used "
              "for the negative prompt by the refiner)", section="sdxl", **_float(0.0, 10.0, 0.1)),
    OptionDef("sdxl_refiner_high_aesthetic_score", 6.0, label="SDXL high aesthetic score (used "
              "for the prompt by the refiner)", section="sdxl", **_float(0.0, 10.0, 0.1)),
    # Forge's "VAE / Text Encoder": the files a FLUX transformer-only checkpoint is completed
    # with (webui.model_manager.modules), by file name (or path, as Forge's API takes it)
    OptionDef("forge_additional_modules", [], _names, "VAE / Text Encoder", "sd",
              choices=_module_names),
    # A1111's VAE section: final decodes by TAESD (drafts; webui.core.previews)
    OptionDef("sd_vae_decode_method", "Full", _choice(*_DECODE_METHODS), "VAE for Decoding "
              "(TAESD: a fast draft decoder from models/VAE-approx)", "sd_vae",
              choices=_DECODE_METHODS),
    OptionDef("sd_vae_encode_method", "Full", _choice(*_DECODE_METHODS), "VAE type for encode "
              "(TAESD: a fast draft encoder for img2img, inpaint and hires fix, from "
              "models/VAE-approx)", "sd_vae", choices=_DECODE_METHODS),
    # ControlNet (sd-webui-controlnet's keys; webui.core.controlnet, webui.ui.controlnet_ui)
    OptionDef("control_net_no_detectmap", False, _bool, "Do not append detectmap to output",
              "control_net"),
    OptionDef("control_net_unit_count", 3, label="Multi-ControlNet: ControlNet unit number "
              "(requires restart)", section="control_net", **_int(1, 10)),
    # other jobs between training steps (webui.core.train_yield): read from the training
    # job's snapshot, so it counts for training jobs submitted after the change
    OptionDef("training_yield_to_jobs", True, _bool, "Run other jobs between training steps "
              "(generations on the checkpoint being trained; the trained weights are the "
              "same)", "training"),
)  # fmt: skip
PATH_OPTIONS = frozenset(d.key for d in OPTION_DEFS if d.path)  # values that are paths


SECRET_SHOWN = "********"  # a secret option's value outside the server, when it is set


def shown_value(definition: OptionDef, value: Any) -> Any:
    """`value` as it may be shown: SECRET_SHOWN for a secret option that is set."""
    return SECRET_SHOWN if definition.secret and value else value
