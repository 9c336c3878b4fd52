"""Icon buttons: glyphs that render on every machine, with a tooltip and an accessible name.

Emoji buttons show as empty boxes where no emoji font is installed and have no name a
screen reader can read. `icon_button(kind, ...)` makes a Gradio button without text whose
glyph is an SVG drawn by CSS (`ICONS_CSS`, in currentColor, so it follows the theme);
`LABELS_JS` gives every such button its `title` and `aria-label` from `ICONS`, which the
translation script then shows in the page's language. The labels are UI strings like any
other (`icon_labels()` feeds the localization coverage check).

This module must never import torch or diffusers.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import gradio as gr

# kind -> (label, SVG path data on a 24x24 grid, drawn with a 2px round stroke)
ICONS: dict[str, tuple[str, str]] = {
    "refresh": (
        "Refresh the list",
        "M20 11a8 8 0 1 0-2.3 5.7 M20 4v7h-7",
    ),
    "random": (
        "Random seed (-1)",
        "M4 4h16v16H4z M8.5 8.5h.01 M15.5 8.5h.01 M12 12h.01 M8.5 15.5h.01 M15.5 15.5h.01",
    ),
    "reuse": (
        "Reuse the seed of the last image",
        "M4 12a8 8 0 0 1 14-5.3 M18 3v4h-4 M20 12a8 8 0 0 1-14 5.3 M6 21v-4h4",
    ),
    "paste": (
        "Read generation parameters from the prompt box (or from your last image)",
        "M19 5 5 19 M5 9v10h10",
    ),
}


def icon_labels() -> list[str]:
    return [label for label, _ in ICONS.values()]


def icon_button(kind: str, *, elem_id: str | None = None, **kwargs) -> gr.Button:
    """A square button showing the `kind` glyph; `kwargs` go to gr.Button."""
    if kind not in ICONS:
        raise KeyError(f"no icon {kind!r}; known: {', '.join(ICONS)}")
    kwargs.setdefault("min_width", 40)
    kwargs.setdefault("scale", 0)
    return gr.Button("", elem_id=elem_id, elem_classes=["icon-button", f"icon-{kind}"], **kwargs)


def _svg_url(path: str) -> str:
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" '
        'stroke="black" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">'
        f'<path d="{path}"/></svg>'
    )
    return f'url("data:image/svg+xml,{quote(svg)}")'


ICONS_CSS = (
    ".icon-button { min-height: 2.4em; align-self: end; }\n"
    ".icon-button::before { content: ''; display: inline-block; flex: none; width: 1.3em;"
    " height: 1.3em;"
    " background-color: currentColor; -webkit-mask: var(--icon) center / contain no-repeat;"
    " mask: var(--icon) center / contain no-repeat; }\n"
    + "".join(
        f".icon-{kind} {{ --icon: {_svg_url(path)}; }}\n" for kind, (_, path) in ICONS.items()
    )
)

LABELS_JS = (
    "(() => {\n"
    f"  const labels = {json.dumps({k: label for k, (label, _) in ICONS.items()})};\n"
    """  const name = (button) => {
    for (const [kind, label] of Object.entries(labels)) {
      if (button.classList.contains('icon-' + kind) && !button.hasAttribute('aria-label')) {
        button.setAttribute('aria-label', label);
        button.setAttribute('title', label);
      }
    }
  };
  const scan = (root) => root.querySelectorAll && root.querySelectorAll('.icon-button').forEach(name);
  const start = () => {
    scan(document);
    new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach((n) => {
      if (n.classList && n.classList.contains('icon-button')) name(n);
      scan(n);
    }))).observe(document.body, { childList: true, subtree: true });
  };
  if (document.body) start();
  else document.addEventListener('DOMContentLoaded', start);
})();"""
)
