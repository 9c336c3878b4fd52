"""The benchmark's result rows, the printed table and the JSON file.

Every row has the same columns: measure, ours, reference, ratio, target, met. The JSON
holds the rows, the conditions (machine, load, versions, configuration) and the raw
numbers behind each row.

This module must never import torch or a UI library.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

COLUMNS = ("measure", "ours", "reference", "ratio", "target", "met")


@dataclass
class Row:
    measure: str
    ours: str
    reference: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None  # None: no target (information)

    def cells(self) -> list[str]:
        ratio = "" if self.ratio is None else f"{self.ratio:.3f}"
        met = {True: "yes", False: "NO", None: ""}[self.met]
        return [self.measure, self.ours, self.reference, ratio, self.target, met]


def gib(value: float) -> str:
    return f"{value / 2**30:.2f} GiB"


def seconds(value: float) -> str:
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def table(rows: list[Row]) -> str:
    """A Markdown table (readable in a terminal and pasteable into the README)."""
    cells = [list(COLUMNS)] + [row.cells() for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in cells]  # fmt: skip
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def conditions_text(conditions: dict) -> str:
    c = conditions
    return (
        f"{c['checkpoint']} · {c['width']}x{c['height']} · {c['steps']} steps · "
        f"peak RSS at {', '.join(f'{s}²' for s in c['rss_sizes']) or 'no size'} · "
        f"{c['rounds']} alternating rounds · {c['device']} ({c['cpu_count']} cores, "
        f"torch {c['torch_threads']} threads) · load average {c['load_before'][0]:.2f} before, "
        f"{c['load_after'][0]:.2f} after · torch {c['torch']} · diffusers {c['diffusers']}"
    )


def write_json(path: Path, rows: list[Row], conditions: dict, raw: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"columns": list(COLUMNS), "rows": [asdict(r) for r in rows],
            "conditions": conditions, "raw": raw}  # fmt: skip
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
    return path
