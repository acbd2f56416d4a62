"""`report.html`: the tables, the figures and the runs' grids in one self-contained page.

Images are embedded as base64 `data:` URIs, so the file can be mailed or opened from
anywhere; no script, no external resource. To keep the page small, each embedded copy is at
most `EMBED_MAX_WIDTH` pixels wide, and JPEG where that is under half the PNG's size (photo
grids become JPEG, plots stay PNG); each image links to its full-size file beside the report.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from miniplaces.report.tables import (
    SETTING_COLUMNS,
    Column,
    ConfusedPair,
    format_cell,
    visible_columns,
)

EMBED_MAX_WIDTH = 1200
JPEG_QUALITY = 85
JPEG_WHEN_UNDER = 0.5  # of the PNG's size

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
figcaption a { margin-left: 0.5rem; }
.notes { font-size: 0.85rem; color: #8a5a00; }
details { margin: 0.5rem 0 1rem; }
summary { cursor: pointer; color: #245; }
th.sub { font-weight: normal; text-align: left; }
.legend { font-size: 0.85rem; color: #555; max-width: 60rem; }
.confusion { display: flex; flex-wrap: wrap; gap: 0 2rem; align-items: flex-start; }
.confusion > div { margin-top: 1.5rem; }
code { background: #f6f6f6; padding: 0 0.2rem; }
"""


@dataclass(frozen=True)
class Picture:
    """An image of the report: the PNG file, its caption and the link to the full-size file (relative to the page)."""

    path: Path
    caption: str
    link: str | None = None


@dataclass(frozen=True)
class Confusion:
    """One eval's confusion matrix: its picture, its most confused pairs and its per-class accuracy, worst first."""

    picture: Picture
    pairs: Sequence[ConfusedPair]
    classes: Sequence[tuple[str, float, int]]


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def embedded_image(path: Path, max_width: int = EMBED_MAX_WIDTH) -> tuple[str, bytes]:
    """(MIME type, bytes) of the copy of an image the page embeds: at most `max_width` pixels wide,
    transparency flattened onto white, as JPEG where that is under half the PNG's size, PNG otherwise;
    the file's own bytes when it needs no downscaling and they are fewer."""
    with Image.open(path) as opened:
        original = Image.MIME.get(opened.format or "")
        image = opened.convert("RGBA")
    if image.width > max_width:
        image = image.resize((max_width, max(1, round(image.height * max_width / image.width))),
                             Image.Resampling.LANCZOS)
    flat = Image.new("RGB", image.size, "white")
    flat.paste(image, mask=image.getchannel("A"))
    png = _encode(flat, "PNG")
    jpeg = _encode(flat, "JPEG", quality=JPEG_QUALITY, optimize=True)
    # Plots keep PNG's sharp lines, where JPEG saves little; photographs (grids) shrink several-fold as JPEG.
    chosen = ("image/jpeg", jpeg) if len(jpeg) < JPEG_WHEN_UNDER * len(png) else ("image/png", png)
    if original in ("image/png", "image/jpeg") and image.width <= max_width:
        data = path.read_bytes()  # already small enough: its own bytes when they are fewer
        if len(data) <= len(chosen[1]):
            return original, data
    return chosen


def data_uri(path: Path) -> str:
    """The embedded copy of an image (see `embedded_image`) as a `data:` URI."""
    mime, data = embedded_image(path)
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _figure(picture: Picture) -> str:
    caption = escape(picture.caption)
    image = f'<img src="{data_uri(picture.path)}" alt="{caption}">'
    if picture.link is None:
        return f"<figure>{image}<figcaption>{caption}</figcaption></figure>"
    link = escape(picture.link)
    return (f'<figure><a href="{link}">{image}</a>'
            f'<figcaption>{caption}<a href="{link}">full size</a></figcaption></figure>')


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    head = "".join(f"<th>{escape(c.header)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if c.fmt else "text"}">{escape(format_cell(row[c.key], c))}</td>' for c in columns
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _results(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The narrow main table, what its numbers are, and every column behind a toggle."""
    details = visible_columns(rows)
    return [
        _table(rows, visible_columns(rows, details=False)),
        '<p class="legend">Best = the epoch <code>best.pt</code> was saved at, scored with the weights it holds: '
        "<b>EMA</b> (the exponential moving average of the weights) when the run keeps one, otherwise <b>raw</b> "
        "(the trained weights); the raw model's own best is in the details. Last = the final epoch, raw weights. "
        "— marks a value the run does not have.</p>",
        f"<details><summary>All {len(details)} columns: last epoch, time, memory, eval and attack</summary>"
        f"{_table(rows, details)}<p class=\"legend\">Time per epoch is the mean over epochs, peak memory the "
        "maximum.</p></details>",
    ]


def _confusion(section: Confusion) -> list[str]:
    """The matrix, then its most confused pairs by name and every class's accuracy (worst first, behind a toggle)."""
    parts = ['<div class="confusion">', _figure(section.picture), "<div>"]
    if section.pairs:
        rows = "".join(f'<tr><td class="text">{escape(p.true)}</td><td class="text">{escape(p.predicted)}</td>'
                       f'<td class="num">{p.count}</td><td class="num">{p.percent:.1f}</td></tr>'
                       for p in section.pairs)
        parts.append(f'<p class="legend">The {len(section.pairs)} most confused pairs</p>'
                     "<table><thead><tr><th>True class</th><th>Predicted as</th><th>Images</th>"
                     f"<th>% of the true class</th></tr></thead><tbody>{rows}</tbody></table>")
    if section.classes:
        rows = "".join(f'<tr><td class="num">{rank}</td><td class="text">{escape(name)}</td>'
                       f'<td class="num">{accuracy:.1f}</td><td class="num">{count}</td></tr>'
                       for rank, (name, accuracy, count) in enumerate(section.classes, 1))
        parts.append(f"<details><summary>Top-1 of each of the {len(section.classes)} classes, worst first</summary>"
                     "<table><thead><tr><th>#</th><th>Class</th><th>Top-1 %</th><th>Images</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table></details>")
    return [*parts, "</div></div>"]


def _settings_table(settings: Sequence[dict[str, Any]]) -> str:
    """One row per setting, one column per run: a few runs side by side read better than a row each."""
    head = "<th>Setting</th>" + "".join(f"<th>{escape(str(row['run']))}</th>" for row in settings)
    body = []
    for column in SETTING_COLUMNS[1:]:
        cells = "".join(f'<td class="{"num" if column.fmt else "text"}">{escape(format_cell(row[column.key], column))}'
                        "</td>" for row in settings)
        body.append(f"<tr><th>{escape(column.header)}</th>{cells}</tr>")
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
    settings: Sequence[dict[str, Any]] = (),
    confusion: Sequence[Confusion] = (),
    comparison: Sequence[ComparisonRow] | None = None,
    attack: str = "",
) -> str:
    """The whole page as a string; a study's comparison rows, when given, come first; `settings` are
    `tables.settings_rows`, `confusion` the runs' matrices with their confused pairs and per-class accuracy."""
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
                  "(over the epochs both ran) and peak memory against the baseline named in the note, on the row's "
                  "device. — : not measured. Each row's scale says its training images per epoch, epochs, image "
                  "size, device and val images.</p>"]
    parts += [
        "<h2>Results</h2>",
        *_results(rows),
    ]
    if settings:
        # Behind a toggle: the figures come first on screen, the settings a click away.
        parts.append("<h2>Runs: data and hyper-parameters</h2>")
        parts.append(f"<details><summary>{len(SETTING_COLUMNS) - 1} settings of each run: dataset, classes, image "
                     "size, model, optimiser, schedule, loader</summary>")
        parts.append(_settings_table(settings))
        parts.append('<p class="legend">From each run\'s resolved <code>config.yaml</code>; image counts from its '
                     "eval files. — marks a value the run does not record.</p></details>")
    if notes:
        items = "".join(f"<li>{escape(note)}</li>" for note in notes)
        parts.append(f'<ul class="notes">{items}</ul>')
    if figures:
        parts.append("<h2>Figures</h2>")
        parts.extend(_figure(p) for p in figures)
    if confusion:
        parts.append("<h2>Confusion matrices</h2>")
        for section in confusion:
            parts.extend(_confusion(section))
    if grids:
        parts.append("<h2>Saliency and attack grids</h2>")
        parts.extend(_figure(p) for p in grids)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
