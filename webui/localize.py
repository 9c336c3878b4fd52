"""`python -m webui.localize`: list the UI strings a localization file lacks.

Builds the whole UI (with a throw-away data folder unless --data-dir is given), collects
its strings with `webui.ui.i18n`, and prints `language<TAB>"text"` for every string a
language file in webui/ui/localizations (or an extension's localizations folder) has no
translation for; exits 1 when something is missing. `--update` first adds the new
English strings to en.json (English -> itself), so a translator sees every key.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .ui import i18n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--update", action="store_true", help="add new English keys to en.json")
    args = parser.parse_args(argv)
    from .context import build_context
    from .settings import parse_flags
    from .ui.blocks import build_ui

    folder = args.data_dir or Path(tempfile.mkdtemp(prefix="webui-i18n-"))
    ctx = build_context(parse_flags(["--data-dir", str(folder), "--no-download-sd-model"]))
    try:
        strings = i18n.ui_strings(build_ui(ctx)) | i18n.message_strings()
        langs = i18n.languages(i18n.extension_localization_dirs(ctx))
    finally:
        ctx.close()
    if args.update:
        path = i18n.LOCALIZATIONS / "en.json"
        english = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        options = set(ctx.options.definitions)
        for text in i18n.missing(strings, english):
            base, _, key = text.rpartition(" (")
            if base and key.rstrip(")") in options:  # a Settings label: "Label (option_key)"
                text = base
            english[text] = text
        text = json.dumps(english, ensure_ascii=False, indent=1, sort_keys=True)
        path.write_text(text + "\n", encoding="utf-8")
        langs["en"] = english
    status = 0
    for name, mapping in sorted(langs.items()):
        lacking = i18n.missing(strings, mapping)
        for text in lacking:
            sys.stdout.write(f"{name}\t{json.dumps(text, ensure_ascii=False)}\n")
        status |= bool(lacking)
    return status


if __name__ == "__main__":
    sys.exit(main())
