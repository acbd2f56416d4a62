"""Reading run directories: the per-epoch metrics, the config, and what analysis left beside them.

A run directory (written by `miniplaces train`, `eval`, `attack`, `saliency`):

```
<run>/config.yaml              resolved config (model, epochs, …)
<run>/metrics.jsonl            one JSON object per epoch
<run>/checkpoints/eval_<split>.json
<run>/attack/attack.json       clean and adversarial accuracy (+ attack_grid.png)
<run>/attack/sweep.json        accuracy at each ε (+ sweep.png)
<run>/saliency/saliency_<method>.png
```

Everything but `metrics.jsonl` is optional; a missing piece becomes `None`, never an error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from miniplaces.errors import MiniPlacesError

METRICS_FILE = "metrics.jsonl"


class RunError(MiniPlacesError):
    """A path given as a run is not a run directory, or its metrics cannot be read."""


@dataclass(frozen=True)
class SweepPoint:
    """Accuracy under attack at one ε (pixel units)."""

    eps: float
    top1: float | None
    top5: float | None = None


@dataclass
class Run:
    """One run directory, read."""

    path: Path
    name: str
    config: dict[str, Any]
    epochs: list[dict[str, Any]]
    attack: dict[str, Any] | None = None
    sweep: list[SweepPoint] = field(default_factory=list)
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> str | None:
        return model_name(self.config)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(epochs, values) of one metric, skipping epochs that lack it or hold a non-number."""
        xs, ys = [], []
        for i, row in enumerate(self.epochs, 1):
            value = number(row.get(key))
            if value is not None:
                xs.append(int(row.get("epoch", i)))
                ys.append(value)
        return xs, ys


def number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, null, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def model_name(config: dict[str, Any]) -> str | None:
    """The model named by a run's config: `model: NAME`, `model: {name: NAME}` or `model_name: NAME`."""
    model = config.get("model", config.get("model_name"))
    if isinstance(model, dict):
        model = model.get("name")
    return str(model) if model else None


def is_run_dir(path: Path) -> bool:
    return (path / METRICS_FILE).is_file()


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
        if is_run_dir(path):
            found.append(path)
        elif not path.exists():
            skipped.append(f"{path}: does not exist")
        elif not path.is_dir():
            skipped.append(f"{path}: not a folder")
        else:
            children = sorted(child for child in path.iterdir() if child.is_dir() and is_run_dir(child))
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


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The epochs of a metrics.jsonl, and notes on lines that could not be read.

    A run still training may have a half-written last line: it is skipped with a note.
    """
    epochs: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RunError(f"cannot read {path}: {err}") from err
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            notes.append(f"{path}:{lineno}: not a JSON object, skipped")
            continue
        if not isinstance(row, dict):
            notes.append(f"{path}:{lineno}: not a JSON object, skipped")
            continue
        epochs.append(row)
    if not epochs:
        raise RunError(f"{path} holds no epochs; is the run still in its first epoch?")
    return epochs, notes


def _read_json(path: Path, notes: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        notes.append(f"{path}: unreadable ({err}), ignored")
        return None


def _read_config(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.is_file():
        notes.append(f"{path}: missing; model and planned epochs unknown")
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        notes.append(f"{path}: unreadable ({err}), ignored")
        return {}
    return config if isinstance(config, dict) else {}


def parse_sweep(data: Any) -> list[SweepPoint]:
    """Sweep points from `sweep.json`: a list of `{eps, top1, top5}` objects, either bare or under
    a key such as `results`/`points`, or columns `{eps: [...], top1: [...]}`."""
    if isinstance(data, dict):
        for key in ("results", "points", "sweep", "rows"):
            if isinstance(data.get(key), list):
                return parse_sweep(data[key])
        eps = data.get("eps", data.get("epsilon"))
        if isinstance(eps, list):
            top1 = data.get("top1", data.get("adv_top1", [None] * len(eps)))
            top5 = data.get("top5", data.get("adv_top5", [None] * len(eps)))
            return parse_sweep([{"eps": e, "top1": a, "top5": b} for e, a, b in zip(eps, top1, top5, strict=False)])
        return []
    points = []
    clean: SweepPoint | None = None
    for row in data if isinstance(data, list) else []:
        if not isinstance(row, dict):
            continue
        flat = flatten(row)
        eps = number(flat.get("eps", flat.get("epsilon")))
        if eps is None:
            continue
        points.append(SweepPoint(eps, _pick(flat, "top1", prefer=("adv",)), _pick(flat, "top5", prefer=("adv",))))
        if clean is None and number(flat.get("clean_top1")) is not None:
            clean = SweepPoint(0.0, number(flat["clean_top1"]), number(flat.get("clean_top5")))
    # A sweep without ε = 0 still knows the clean accuracy: it is the accuracy at ε = 0.
    if clean is not None and not any(p.eps == 0 for p in points):
        points.append(clean)
    return sorted(points, key=lambda p: p.eps)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"clean": {"top1": 1}}` → `{"clean_top1": 1}`."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


def _pick(flat: dict[str, Any], suffix: str, prefer: Iterable[str] = ()) -> float | None:
    """The value of `<suffix>` (e.g. top1), preferring keys that contain one of `prefer`."""
    candidates = [k for k in flat if k == suffix or k.endswith(f"_{suffix}")]
    for word in prefer:
        for key in candidates:
            if word in key and number(flat[key]) is not None:
                return number(flat[key])
    for key in candidates:
        if key == suffix and number(flat[key]) is not None:
            return number(flat[key])
    return None


def attack_summary(attack: dict[str, Any] | None) -> dict[str, Any]:
    """Clean and adversarial top-1, ε and mode from an `attack.json` (None where absent)."""
    if not attack:
        return {"attack_mode": None, "attack_eps": None, "clean_top1": None, "adv_top1": None}
    flat = flatten(attack)
    clean = next((number(v) for k, v in flat.items() if "clean" in k and k.endswith("top1")), None)
    adv = next((number(v) for k, v in flat.items() if "adv" in k and k.endswith("top1")), None)
    eps = next((number(flat[k]) for k in ("eps", "epsilon", "attack_eps", "config_eps") if k in flat), None)
    mode = next((flat[k] for k in ("mode", "attack_mode", "config_mode") if isinstance(flat.get(k), str)), None)
    return {"attack_mode": mode, "attack_eps": eps, "clean_top1": clean, "adv_top1": adv}


def load_run(path: Path | str) -> Run:
    """Read one run directory; only `metrics.jsonl` is required."""
    path = Path(path)
    if not is_run_dir(path):
        raise RunError(f"{path} is not a run directory: it holds no {METRICS_FILE}")
    epochs, notes = read_metrics(path / METRICS_FILE)
    config = _read_config(path / "config.yaml", notes)
    run = Run(path=path, name=path.name, config=config, epochs=epochs, notes=notes)

    attack_file = path / "attack" / "attack.json"
    if attack_file.is_file():
        data = _read_json(attack_file, notes)
        run.attack = data if isinstance(data, dict) else None
    sweep_file = path / "attack" / "sweep.json"
    if sweep_file.is_file():
        run.sweep = parse_sweep(_read_json(sweep_file, notes))
    for eval_file in sorted((path / "checkpoints").glob("eval_*.json")):
        data = _read_json(eval_file, notes)
        if isinstance(data, dict):
            run.evals[eval_file.stem.removeprefix("eval_")] = data
    run.images = sorted((path / "attack").glob("*.png")) + sorted((path / "saliency").glob("*.png"))
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
