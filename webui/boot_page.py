"""The waiting page `webui.boot` serves while the program loads: HTML, its script, its words.

The page shows what the server is waiting for (the build's phase, e.g. "Loading torch",
and a second line such as "Loading model X"), asks `/internal/startup` every half second,
and reloads itself into the real UI when the server says it is ready; a failed start-up
shows its message and stops asking. Its words are translated with the UI's language files
(webui/ui/localizations): the --localization flag or option, else the browser's language.

This module must never import anything but the standard library (it runs before torch,
Gradio and FastAPI are loaded).
"""

from __future__ import annotations

import html
import json
import logging
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCALIZATIONS = Path(__file__).parent / "ui" / "localizations"
TITLE = "Stable Diffusion web UI"
# every English text the page can show; the phases are those of webui.app.build_server
PAGE_STRINGS = (
    TITLE,
    "Starting",
    "Start-up failed",
    "Start-up failed; see the server's log.",
    "The page opens by itself when the server is ready.",
    "The server could not start. Fix the cause shown here and in its log, then restart it.",
    "seconds",
    "Preparing the models folder",
    "Downloading the default checkpoint (about 4 GB)",
    "Loading torch",
    "Loading diffusers",
    "Starting the worker",
    "Loading Gradio",
    "Building the page",
    "Loading model",
)

SCRIPT = """
const words = DATA.words, statusUrl = DATA.status;
function tr(text) {
  if (!text) return "";
  if (words[text]) return words[text];
  for (const key of Object.keys(words))
    if (text.startsWith(key + " ")) return words[key] + text.slice(key.length);
  return text;
}
function show(s) {
  const phase = s.error ? tr("Start-up failed") : tr(s.phase) + " …";
  document.getElementById("phase").textContent = phase;
  document.getElementById("detail").textContent = s.error ? s.error : tr(s.detail);
  document.getElementById("note").textContent = s.error
    ? tr("The server could not start. Fix the cause shown here and in its log, then restart it.")
    : tr("The page opens by itself when the server is ready.");
  document.getElementById("seconds").textContent = s.error ? "" : s.seconds + " " + tr("seconds");
  document.body.dataset.state = s.error ? "failed" : (s.ready ? "ready" : "starting");
}
async function poll() {
  let s = null;
  try { s = await (await fetch(statusUrl, {cache: "no-store"})).json(); } catch (e) {}
  if (s && s.ready) { location.reload(); return; }
  if (s) show(s);
  if (!s || !s.error) setTimeout(poll, 500);
}
for (const el of document.querySelectorAll("[data-tr]")) el.textContent = tr(el.textContent);
show(DATA.initial);
setTimeout(poll, 500);
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; display: flex; min-height: 100vh;
       align-items: center; justify-content: center; background: #fafafa; color: #222; }
main { max-width: 40rem; padding: 2rem; }
h1 { font-size: 1.4rem; color: #ea580c; }
#phase { font-size: 1.2rem; } #detail { color: #444; white-space: pre-wrap; }
#note, #seconds { color: #777; font-size: 0.9rem; }
body[data-state=failed] #phase { color: #b91c1c; }
"""


@cache
def _translations(language: str) -> dict[str, dict[str, str]]:
    """language name -> this page's words in it; "auto" gives every language file's."""
    found: dict[str, dict[str, str]] = {}
    for path in sorted(LOCALIZATIONS.glob("*.json")):
        if language != "auto" and path.stem.lower() != language.lower().replace("-", "_"):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("localization %s is unreadable: %s", path, exc)
            continue
        found[path.stem] = {k: str(data[k]) for k in PAGE_STRINGS if k in data}
    return found


def _choice_script(language: str) -> str:
    """JS that picks the words: the chosen language, else the browser's first known one."""
    if language != "auto":
        return "DATA.words = Object.values(DATA.languages)[0] || {};"
    return (
        "DATA.words = {}; for (const lang of navigator.languages || [navigator.language]) {"
        " const k = Object.keys(DATA.languages).find(n => n.toLowerCase() ==="
        " lang.replace('-', '_').toLowerCase() || n.toLowerCase() === lang.split('-')[0]);"
        " if (k) { DATA.words = DATA.languages[k]; break; } }"
    )


def waiting_page(status: dict[str, Any], status_url: str, language: str = "auto") -> str:
    """The whole page for the build's `status` (Startup.snapshot)."""
    data = {"initial": status, "status": status_url, "languages": _translations(language)}
    encoded = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    phase = html.escape(status["error"] and "Start-up failed" or status["phase"])
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{TITLE}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style></head>
<body data-state="starting"><main>
<h1 data-tr>{TITLE}</h1>
<p id="phase">{phase}</p>
<p id="detail">{html.escape(str(status["error"] or status["detail"] or ""))}</p>
<p id="seconds"></p>
<p id="note"></p>
</main>
<script>const DATA = {encoded}; {_choice_script(language)}
{SCRIPT}</script>
</body></html>
"""
