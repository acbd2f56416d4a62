"""`build_report`: from run directories to `results.md`, `results.csv`, figures, grids and `report.html`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from miniplaces.fileio import atomic_write_bytes, atomic_write_text
from miniplaces.report import figures
from miniplaces.report.html import Confusion, Picture, render_html
from miniplaces.report.runs import Run, load_runs
from miniplaces.report.tables import (
    confused_pairs,
    per_class_accuracy,
    results_rows,
    settings_rows,
    to_markdown,
    write_csv,
)

if TYPE_CHECKING:
    from miniplaces.report.study import ComparisonRow

FIGURES = (
    ("accuracy.png", figures.accuracy_curves,
     "Top-1 and top-5 accuracy per epoch (train dashed, val solid, EMA val dotted; a colour and marker per run)"),
    ("loss.png", figures.loss_curves, "Loss per epoch (train dashed, val solid, EMA val dotted)"),
    ("time_memory.png", figures.time_and_memory, "Mean time per epoch and peak memory per run"),
    ("attack_accuracy.png", figures.attack_accuracy, "Top-1 accuracy under attack"),
)


@dataclass
class Report:
    """What `build_report` wrote, and the notes on skipped paths and ignored files."""

    out: Path
    runs: list[Run]
    markdown: Path
    csv: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    grids: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    table: str = ""
    confusion: list[Path] = field(default_factory=list)
    comparison: str = ""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _link(path: Path, out: Path) -> str:
    """The page's relative link to a file written under `out` (the full-size image beside the report)."""
    return path.relative_to(out).as_posix()


def _confusion_figures(runs: Sequence[Run], out: Path, notes: list[str]) -> list[Confusion]:
    """One confusion-matrix figure (with its confused pairs and per-class accuracy) per eval file of each run;
    a note for each run that has none."""
    sections = []
    for run in runs:
        if not run.evals:
            notes.append(f"{run.name}: no confusion matrix, the run has no checkpoints/eval_<split>.json "
                         "(`miniplaces eval` writes it)")
        for split, result in run.evals.items():
            path = figures.confusion_matrix(result, run.name, out / "confusion" / f"{_safe(run.name)}_{split}.png")
            checkpoint = Path(result.checkpoint).name
            if checkpoint == "best.pt":
                checkpoint += ", EMA weights" if run.keeps_ema else ", raw weights"
            picture = Picture(path, f"{run.name}: confusion matrix on {split} ({checkpoint}); "
                                    "rows are true classes, each normalised to 100%", _link(path, out))
            sections.append(Confusion(picture, confused_pairs(result), per_class_accuracy(result)))
    return sections


def _shown_path(path: Path) -> Path:
    """`path` as the reader typed it, most likely: relative to the current folder when inside it (a report
    shared from a checkout names `runs/simplenet`, not the machine's folders), else as it is."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def build_report(paths: Sequence[Path | str], out: Path | str, title: str = "miniplaces report",
                 comparison: Sequence[ComparisonRow] | None = None, attack: str = "") -> Report:
    """Read the runs among `paths` (see `find_run_dirs`) and write the report into `out`.

    With `comparison` (a study's rows, `miniplaces.report.study`), the report opens with the
    "study vs this project" table (`attack` describes its attacked column), and `paths` may be empty
    (every experiment skipped).
    Raises `RunError` when no path is a readable run (and there is no comparison).
    """
    from miniplaces.report.study import comparison_markdown

    runs, notes = load_runs(paths) if paths or comparison is None else ([], [])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = results_rows(runs)
    table = to_markdown(rows) if rows else ""
    compared = comparison_markdown(comparison, attack) if comparison is not None else ""
    markdown = out / "results.md"
    details = f"\n## Details\n\n{to_markdown(rows, details=True)}" if rows else ""
    text = f"# {title}\n\n{table}{details}"
    if comparison is not None:
        text = (f"# {title}\n\n## Study vs this project\n\n{compared}\n## Runs\n\n{table or 'No run finished.'}"
                f"{details}\n")
    atomic_write_text(markdown, text)
    csv_path = write_csv(rows, out / "results.csv")

    written: list[Picture] = []
    for filename, draw, caption in FIGURES:
        path = draw(runs, out / filename)
        if path is not None:
            written.append(Picture(path, caption, _link(path, out)))

    # The runs' own grids are copied beside the report, so it stays whole when the runs move.
    grids: list[Picture] = []
    for run in runs:
        for image in run.images:
            target = out / "grids" / _safe(run.name) / image.name
            atomic_write_bytes(target, image.read_bytes())
            grids.append(Picture(target, f"{run.name}: {image.parent.name}/{image.name}", _link(target, out)))
    confusion = _confusion_figures(runs, out, notes)

    html = out / "report.html"
    atomic_write_text(html, render_html(rows, written, grids, notes, [_shown_path(r.path) for r in runs], title,
                                        settings=settings_rows(runs), confusion=confusion, comparison=comparison,
                                        attack=attack))
    return Report(out, runs, markdown, csv_path, html, [p.path for p in written], [p.path for p in grids], notes,
                  table, [c.picture.path for c in confusion], compared)
