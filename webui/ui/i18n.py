"""The bilingual UI: translations in data files, applied in the browser, checked by tests.

The tab modules are written in English and know nothing of this. Translations are JSON
files in `webui/ui/localizations/` (`en.json`, `zh_CN.json`: English text -> shown text;
`{}` in a key is a placeholder, e.g. "Step {}/{}"), plus `localizations/*.json` in any
extension folder. `head_html` embeds them with `i18n.js`, which translates the page's text
nodes, placeholders, titles and aria-labels, and whatever Gradio adds later. The language
is --localization, else the `localization` option, else the browser's language ("Auto").

`ui_strings(blocks)` collects every string the built UI shows (labels, info, placeholders,
button text, tab titles, radio choices, Markdown/HTML text we write) and
`message_strings()` the gr.Info/gr.Warning/InputError texts of `webui/ui/*.py`:
`python -m webui.localize` lists what a language file lacks (`--update` adds new English
keys to en.json for translators).

This module must never import torch or diffusers.
"""

from __future__ import annotations

import ast
import html.parser
import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .habits import habit_labels
from .icons import icon_labels

log = logging.getLogger(__name__)

LOCALIZATIONS = Path(__file__).with_name("localizations")
UI_DIR = Path(__file__).parent
AUTO = "auto"
_MESSAGE_CALLS = {"Error", "Info", "Warning"}
_LETTERS = re.compile(r"[A-Za-z]{2,}")
_OPTION_SUFFIX = re.compile(r"^(.*\S) \(([A-Za-z0-9_]+)\)$")


def languages(extra_dirs: Iterable[Path] = ()) -> dict[str, dict[str, str]]:
    """name -> mapping for every language file (extension files merged in)."""
    found: dict[str, dict[str, str]] = {}
    for folder in [LOCALIZATIONS, *extra_dirs]:
        for path in sorted(Path(folder).glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("localization %s is unreadable: %s", path, exc)
                continue
            if isinstance(data, dict):
                found.setdefault(path.stem, {}).update({str(k): str(v) for k, v in data.items()})
    return found


def extension_localization_dirs(ctx: Any) -> list[Path]:
    host = getattr(ctx, "extensions", None)
    dirs = []
    for record in getattr(host, "records", []):
        if record.active and record.path is not None and (record.path / "localizations").is_dir():
            dirs.append(record.path / "localizations")
    return dirs


def normalize(name: str | None, known: Iterable[str]) -> str:
    """A known language name: zh-CN or zh_cn -> zh_CN; empty, None, Auto, unknown -> auto."""
    if not name or name.strip().lower() in (AUTO, "none"):
        return AUTO
    wanted = name.strip().replace("-", "_").lower()
    for lang in known:
        if lang.lower() == wanted:
            return lang
    log.warning(
        "localization %r not found (have: %s); following the browser", name, ", ".join(known)
    )
    return AUTO


def chosen_language(ctx: Any, known: Iterable[str]) -> str:
    known = list(known)
    flag = getattr(ctx.flags, "localization", None)
    if flag:
        return normalize(flag, known)
    try:
        option = ctx.options.get("localization")
    except KeyError:
        option = None
    return normalize(option, known)


def head_html(ctx: Any) -> str:
    """The <script> tags that translate the page (goes into gr.mount_gradio_app(head=))."""
    langs = languages(extension_localization_dirs(ctx))
    config = {"choice": chosen_language(ctx, langs), "languages": langs}
    data = json.dumps(config, ensure_ascii=False).replace("</", "<\\/")
    script = (UI_DIR / "i18n.js").read_text(encoding="utf-8")
    return f"<script>window.webuiLocalization = {data};</script>\n<script>{script}</script>"


# --- collecting the strings of the UI ------------------------------------------------------


class _TextNodes(html.parser.HTMLParser):
    """The text nodes of an HTML fragment, outside pre/code/script/style."""

    SKIP = {"pre", "code", "script", "style", "textarea"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skipping += 1
        for name, value in attrs:
            if name in ("title", "placeholder", "aria-label") and value and not self._skipping:
                self.texts.append(value)

    def handle_endtag(self, tag):
        if tag in self.SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data):
        if not self._skipping and data.strip():
            self.texts.append(data.strip())


def html_texts(fragment: str) -> list[str]:
    parser = _TextNodes()
    parser.feed(fragment or "")
    return parser.texts


def markdown_texts(text: str) -> list[str]:
    from markdown_it import MarkdownIt

    return html_texts(MarkdownIt("commonmark").render(text or ""))


def needs_translation(text: str) -> bool:
    """Words to translate: at least two Latin letters, not a path, URL or file name."""
    text = text.strip()
    if not _LETTERS.search(text):
        return False
    if re.fullmatch(
        r"(https?://|/|\.{0,2}/)\S*|[\w\-. /\\]+\.(safetensors|ckpt|pt|png|json|txt|csv)", text
    ):
        return False
    return not re.fullmatch(r"v?\d+(\.\d+)+\S*", text)


def ui_strings(blocks: Any) -> set[str]:
    """Every text the built Blocks show, from its config."""
    found: set[str] = set()
    config = blocks.get_config_file()
    for component in config["components"]:
        kind, props = component.get("type"), component.get("props", {})
        for key in ("label", "info", "placeholder"):  # hidden ones are shown later
            if isinstance(props.get(key), str):
                found.add(props[key])
        value = props.get("value")
        if kind == "button" and isinstance(value, str):
            found.add(value)
        elif kind == "markdown" and isinstance(value, str):
            found.update(markdown_texts(value))
        elif kind == "html" and isinstance(value, str):
            found.update(html_texts(value))
        if kind == "dataframe":
            found.update(str(h) for h in props.get("headers") or [])
        if kind in ("radio", "checkboxgroup"):
            for choice in props.get("choices") or []:
                shown = choice[0] if isinstance(choice, list | tuple) else choice
                found.add(str(shown))
    found.update(icon_labels())  # set in the page by icons.LABELS_JS
    found.update(habit_labels())  # shown by habits.js
    return {s.strip() for s in found if needs_translation(s)}


def message_strings(folder: Path = UI_DIR) -> set[str]:
    """gr.Error/gr.Info/gr.Warning and InputError texts in the UI modules; f-string parts
    become {}."""
    found: set[str] = set()
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            gradio_call = (isinstance(func, ast.Attribute) and func.attr in _MESSAGE_CALLS
                           and isinstance(func.value, ast.Name) and func.value.id == "gr")  # fmt: skip
            if not gradio_call and not (isinstance(func, ast.Name) and func.id == "InputError"):
                continue
            text = _literal(node.args[0])
            if text and needs_translation(text):
                found.add(text)
    return found


def _literal(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append("{}")
        text = "".join(parts)
        return None if text.strip() == "{}" else text
    return None


def covered(text: str, mapping: dict[str, str]) -> bool:
    """The same matching rules as i18n.js: exact, pattern with {}, or 'Label (key)'."""
    key = text.strip()
    if key in mapping:
        return True
    for pattern in (k for k in mapping if "{}" in k):
        regex = "^" + "(.*?)".join(re.escape(p) for p in pattern.split("{}")) + "$"
        if re.match(regex, key, re.DOTALL):
            return True
    m = _OPTION_SUFFIX.match(key)
    return bool(m and m.group(1) in mapping)


def missing(strings: Iterable[str], mapping: dict[str, str]) -> list[str]:
    return sorted(s for s in set(strings) if not covered(s, mapping))
