"""`report.html`: the table, the figures and the runs' grids in one self-contained page.

Images are embedded as base64 `data:` URIs, so the file can be mailed or opened from
anywhere; no script, no external resource.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from miniplaces.report.tables import format_cell, visible_columns

if TYPE_CHECKING:
    from miniplaces.report.study import ComparisonRow

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #222; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.5rem; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85rem; color: #555; }
.notes { font-size: 0.85rem; color: #8a5a00; }
code { background: #f6f6f6; padding: 0 0.2rem; }
"""


@dataclass(frozen=True)
class Picture:
    """An image of the report: the PNG file and its caption."""

    path: Path
    caption: str


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(picture: Picture) -> str:
    return (
        f'<figure><img src="{data_uri(picture.path)}" alt="{escape(picture.caption)}">'
        f"<figcaption>{escape(picture.caption)}</figcaption></figure>"
    )


def _table(rows: Sequence[dict[str, Any]]) -> str:
    columns = visible_columns(rows)
    head = "".join(f"<th>{escape(c.header)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if c.fmt else "text"}">{escape(format_cell(row[c.key], c))}</td>' for c in columns
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _comparison_table(rows: Sequence[ComparisonRow]) -> str:
    from miniplaces.report.study import HEADERS

    head = "".join(f"<th>{escape(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f'<td class="{"num" if 3 <= i <= 9 else "text"}">{escape(c)}</td>'
                                    for i, c in enumerate(row.cells())) + "</tr>" for row in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def render_html(
    rows: Sequence[dict[str, Any]],
    figures: Sequence[Picture],
    grids: Sequence[Picture],
    notes: Sequence[str],
    sources: Sequence[Path],
    title: str = "miniplaces report",
    comparison: Sequence[ComparisonRow] | None = None,
    attack: str = "",
) -> str:
    """The whole page as a string; a study's comparison rows, when given, come first."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        "<p>Runs: " + ", ".join(f"<code>{escape(str(p))}</code>" for p in sources) + "</p>",
    ]
    if comparison is not None:
        attacked = f"Attacked: top-1 under {attack}. " if attack else ""
        parts += ["<h2>Study vs this project</h2>", _comparison_table(comparison),
                  f"<p>{escape(attacked)}Δ: ours − seed, in points. Time × / Memory ×: training time per image "
                  "and peak memory against the baseline named in the note, on the row's device. — : not measured. "
                  "Each row's scale says its training images per epoch, epochs, image size, device and val "
                  "images.</p>"]
    parts += [
        "<h2>Results</h2>",
        _table(rows),
        "<p>Final = last epoch; best = the epoch of the highest val top-1; time per epoch is the mean over "
        "epochs, peak memory the maximum. — marks a value the run does not have.</p>",
    ]
    if notes:
        items = "".join(f"<li>{escape(note)}</li>" for note in notes)
        parts.append(f'<ul class="notes">{items}</ul>')
    if figures:
        parts.append("<h2>Figures</h2>")
        parts.extend(_figure(p) for p in figures)
    if grids:
        parts.append("<h2>Saliency and attack grids</h2>")
        parts.extend(_figure(p) for p in grids)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
