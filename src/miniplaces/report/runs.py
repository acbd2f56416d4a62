"""Reading run folders for the report: exactly the records `miniplaces.records` writes.

`config.yaml` and `metrics.jsonl` come from `miniplaces train`; `eval_<split>.json`,
`attack/attack.json`, `attack/sweep.json` and the PNG grids come from `eval`, `attack` and
`saliency` (see `RunDir`). Everything but `metrics.jsonl` is optional: a missing piece is
`None`, and an unreadable one is ignored with a note.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from miniplaces.config import load_yaml
from miniplaces.errors import MiniPlacesError
from miniplaces.records import AttackResult, EvalResult, MetricsRow, RunFileError, Sweep, read_metrics
from miniplaces.rundir import METRICS_FILE, RunDir


class RunError(MiniPlacesError):
    """A path given as a run is not a run directory, or its metrics cannot be read."""


@dataclass(frozen=True)
class SweepPoint:
    """Accuracy under attack at one ε (pixel units)."""

    eps: float
    top1: float
    top5: float


@dataclass
class Run:
    """One run directory, read."""

    path: Path
    name: str
    config: dict[str, Any]
    epochs: list[MetricsRow]
    attack: AttackResult | None = None
    sweep: Sweep | None = None
    evals: dict[str, EvalResult] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> str | None:
        model = self.config.get("model")
        return str(model) if model else None

    @property
    def keeps_ema(self) -> bool:
        """Whether the run keeps an EMA of its weights: then `best.pt` holds the EMA's weights, not the raw ones."""
        return any(row.val_top1_ema is not None for row in self.epochs)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of one metric, skipping epochs where it is not a finite number."""
        xs, ys = [], []
        for row in self.epochs:
            value = number(getattr(row, key))
            if value is not None:
                xs.append(row.epoch)
                ys.append(value)
        return xs, ys

    def sweep_points(self) -> list[SweepPoint]:
        """The sweep's top-1/top-5 under attack by ε; the clean accuracy stands for ε = 0 when not swept."""
        if self.sweep is None or not self.sweep.rows:
            return []
        points = [SweepPoint(row.eps, row.adv_top1, row.adv_top5) for row in self.sweep.rows]
        if not any(p.eps == 0 for p in points):
            first = self.sweep.rows[0]
            points.append(SweepPoint(0.0, first.clean_top1, first.clean_top5))
        return sorted(points, key=lambda p: p.eps)


def number(value: Any) -> float | None:
    """A finite float, or None (a metric may be NaN or infinite, e.g. the loss of a diverged run)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def find_run_dirs(paths: Sequence[Path | str]) -> tuple[list[Path], list[str]]:
    """Run directories among `paths`, and a note for each path skipped.

    A folder holding runs (e.g. `runs/`) stands for the runs inside it. When several paths
    are given (a shell glob such as `runs/*`), those that are not runs are skipped with a
    note; when nothing is a run, `RunError` names every path and what it lacks.
    """
    found: list[Path] = []
    skipped: list[str] = []
    for raw in paths:
        path = Path(raw)
        if RunDir(path).is_run():
            found.append(path)
        elif not path.exists():
            skipped.append(f"{path}: does not exist")
        elif not path.is_dir():
            skipped.append(f"{path}: not a folder")
        else:
            children = sorted(child for child in path.iterdir() if child.is_dir() and RunDir(child).is_run())
            if children:
                found.extend(children)
            elif not any(path.iterdir()):
                skipped.append(f"{path}: empty folder, not a run (a run holds {METRICS_FILE})")
            else:
                skipped.append(f"{path}: no {METRICS_FILE}, not a run directory of `miniplaces train`")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        listed = "\n  ".join(skipped) if skipped else "(no paths given)"
        raise RunError(
            f"no run directory found:\n  {listed}\n"
            f"Give folders written by `miniplaces train` (each holds {METRICS_FILE}), e.g. `runs/*`."
        )
    return unique, skipped


def _read_config(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        notes.append(f"{path}: missing; model and planned epochs unknown")
        return {}
    try:
        config = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        notes.append(f"{path}: unreadable ({err}), ignored")
        return {}
    return config if isinstance(config, dict) else {}


def _optional(read: Any, path: Path, notes: list[str]) -> Any:
    """`read(path)` when the file exists; None (with a note when it is unreadable) otherwise."""
    if not path.is_file():
        return None
    try:
        return read(path)
    except RunFileError as err:
        notes.append(f"{err}; ignored")
        return None


def load_run(path: Path | str) -> Run:
    """Read one run directory; only `metrics.jsonl` is required."""
    run_dir = RunDir(path)
    if not run_dir.is_run():
        raise RunError(f"{run_dir.path} is not a run directory: it holds no {METRICS_FILE}")
    try:
        epochs = read_metrics(run_dir.metrics)
    except RunFileError as err:
        raise RunError(str(err)) from err
    if not epochs:
        raise RunError(f"{run_dir.metrics} holds no epochs; is the run still in its first epoch?")
    notes: list[str] = []
    run = Run(path=run_dir.path, name=run_dir.name, config=_read_config(run_dir.config, notes), epochs=epochs,
              notes=notes)
    run.attack = _optional(AttackResult.read, run_dir.attack.result, notes)
    run.sweep = _optional(Sweep.read, run_dir.attack.sweep, notes)
    for split, eval_path in run_dir.eval_files().items():
        result = _optional(EvalResult.read, eval_path, notes)
        if result is not None:
            run.evals[split] = result
    run.images = run_dir.images()
    return run


def load_runs(paths: Sequence[Path | str]) -> tuple[list[Run], list[str]]:
    """The runs among `paths` (see `find_run_dirs`), and notes on what was skipped or ignored."""
    dirs, notes = find_run_dirs(paths)
    runs: list[Run] = []
    problems: list[str] = []
    for d in dirs:
        try:
            runs.append(load_run(d))
        except RunError as err:
            problems.append(str(err))
    if not runs:
        raise RunError("no readable run:\n  " + "\n  ".join(problems))
    notes.extend(f"skipped: {p}" for p in problems)
    # Two runs with the same folder name (runs_a/x, runs_b/x) get told apart by their parent.
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = f"{run.path.parent.name}/{run.name}"
    for run in runs:
        notes.extend(run.notes)
    return runs, notes
