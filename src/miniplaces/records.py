"""The typed records of a run folder's files, written and read by the same class.

`MetricsRow` (one epoch of `metrics.jsonl` / `metrics.csv`), `EvalResult`, `AttackResult`, `Sweep` and
`StudyRecord` are what the commands write and the report reads; a file that is not one is a `RunFileError`
naming it. Where each file lives is `miniplaces.rundir`'s; how it is written, `miniplaces.fileio`'s.
"""

from __future__ import annotations

import csv
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from miniplaces import schema
from miniplaces.errors import MiniPlacesError
from miniplaces.fileio import atomic_write_json, atomic_write_text

T = TypeVar("T")
R = TypeVar("R", bound="JsonRecord")


class RunFileError(MiniPlacesError):
    """A file of a run folder cannot be read as the record this module writes there."""


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFileError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise RunFileError(f"{path} holds no JSON object")
    return data


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    """`cls(**data)` for a record's own keys, each checked against its type; a `RunFileError` naming `where`."""
    record, problem = schema.build(cls, data)
    if problem is not None:
        if problem.missing:
            raise RunFileError(f"{where}: key {problem.key!r} is missing")
        raise RunFileError(f"{where}: key {problem.key!r} must be {problem.expected}, got {problem.value!r}")
    return record  # type: ignore[return-value]


@dataclass(frozen=True)
class MetricsRow:
    """One epoch of `metrics.jsonl`: accuracies in percent, memory in MB of `peak_memory_kind`.

    A row read back is checked against these types and bounds (a loss may be NaN: an epoch that diverged).
    """

    epoch: int = schema.key(minimum=1)
    train_loss: float = schema.key(minimum=0)
    train_top1: float = schema.key(minimum=0, maximum=100)
    train_top5: float = schema.key(minimum=0, maximum=100)
    val_loss: float = schema.key(minimum=0)
    val_top1: float = schema.key(minimum=0, maximum=100)
    val_top5: float = schema.key(minimum=0, maximum=100)
    lr: float = schema.key(minimum=0)
    epoch_time_s: float = schema.key(minimum=0)
    images_per_s: float = schema.key(minimum=0)
    peak_memory_mb: float = schema.key(minimum=0)
    peak_memory_kind: str
    # The EMA's validation (config key `ema`); null when the run keeps no EMA.
    val_loss_ema: float | None = schema.key(None, minimum=0)
    val_top1_ema: float | None = schema.key(None, minimum=0, maximum=100)
    val_top5_ema: float | None = schema.key(None, minimum=0, maximum=100)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "metrics row") -> MetricsRow:
        return _build(cls, data, where)


METRIC_KEYS = tuple(f.name for f in fields(MetricsRow))


def read_metrics(path: Path | str) -> list[MetricsRow]:
    """The epochs of a `metrics.jsonl` (none if the file does not exist yet).

    Raises `RunFileError` naming the file and line of a row that is not what `write_metrics` writes.
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RunFileError(f"cannot read {path}: {err}") from err
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise RunFileError(f"{path}:{lineno}: not JSON ({err})") from err
        if not isinstance(data, dict):
            raise RunFileError(f"{path}:{lineno}: not a JSON object")
        rows.append(MetricsRow.from_dict(data, where=f"{path}:{lineno}"))
    return rows


def write_metrics(path: Path | str, rows: Sequence[MetricsRow]) -> Path:
    """The whole `metrics.jsonl` at once (atomically), so a reader never sees half a row."""
    return atomic_write_text(path, "".join(json.dumps(row.to_dict()) + "\n" for row in rows))


def write_metrics_csv(path: Path | str, rows: Sequence[MetricsRow]) -> Path:
    """The same rows as `write_metrics`, as CSV (atomically): a header of `METRIC_KEYS`, floats as
    Python writes them (they read back exactly), null as an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRIC_KEYS)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row.to_dict().values()])
    return atomic_write_text(path, buffer.getvalue())


class JsonRecord(ABC):
    """A record kept as one JSON object: `to_dict`/`from_dict`, and `write`/`read` through them."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The record as the JSON object its file holds."""

    @classmethod
    @abstractmethod
    def from_dict(cls: type[R], data: dict[str, Any], where: str = "") -> R:
        """The record from that object; `where` names its source in errors."""

    def write(self, path: Path | str) -> Path:
        """Write the record atomically; return `path`."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def read(cls: type[R], path: Path | str) -> R:
        """The record in `path`; `RunFileError` naming the file when it is not one."""
        return cls.from_dict(_read_json_object(Path(path)), where=str(path))  # type: ignore[attr-defined]


class ClassAccuracy(NamedTuple):
    """One class's line of `EvalResult.per_class` (written with the key `class` for `name`)."""

    name: str
    accuracy: float
    count: int


@dataclass(frozen=True)
class EvalResult(JsonRecord):
    """`eval_<split>.json`: a checkpoint on a labelled split.

    `confusion[i][j]` counts images of true class i predicted as j; `model` is the checkpoint's
    `{"name", "kwargs"}` entry.
    """

    checkpoint: str
    model: dict[str, Any]
    epoch: int | None
    split: str
    tta: str | None
    image_size: int
    count: int
    top1: float
    top5: float
    loss: float
    per_class: list[ClassAccuracy]
    confusion: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["per_class"] = [{"class": c.name, "accuracy": c.accuracy, "count": c.count} for c in self.per_class]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "eval result") -> EvalResult:
        data = dict(data)
        try:
            data["per_class"] = [ClassAccuracy(c["class"], c["accuracy"], c["count"]) for c in data["per_class"]]
        except (KeyError, TypeError) as err:
            raise RunFileError(f"{where}: per_class is not a list of {{class, accuracy, count}} ({err})") from err
        return _build(cls, data, where)


@dataclass(frozen=True)
class AttackSource:
    """What was attacked: the checkpoint (and its `model` entry), the split and how much of it.

    `limit` is the cap that was asked for (None: the whole split); the images actually attacked
    are the result's `images` (fewer when the split is smaller than the cap).
    """

    checkpoint: str
    root: str
    split: str
    image_size: int
    # Always written; None only in files the demo wrote before the source was one record.
    model: dict[str, Any] | None = None
    limit: int | None = None
    seed: int | None = None


_SCORE_KEYS = ("images", "clean_top1", "clean_top5", "adv_top1", "adv_top5", "success_rate",
               "success_definition", "mean_linf", "mean_l2")
_SOURCE_KEYS = tuple(f.name for f in fields(AttackSource))


@dataclass(frozen=True)
class AttackResult(JsonRecord):
    """Accuracy under one attack: `attack.json`, and each row of a `Sweep`.

    `settings` is the attack's settings dict as the attacks code makes it (mode, eps, steps, …);
    the file holds its keys, the scores and the source side by side in one flat object.
    """

    settings: dict[str, Any]
    images: int
    clean_top1: float
    clean_top5: float
    adv_top1: float
    adv_top5: float
    success_rate: float | None
    success_definition: str
    mean_linf: float
    mean_l2: float
    source: AttackSource | None = None

    @property
    def eps(self) -> float:
        return float(self.settings["eps"])

    @property
    def mode(self) -> str | None:
        return self.settings.get("mode")

    @classmethod
    def from_scores(cls, scores: dict[str, Any], source: AttackSource | None = None) -> AttackResult:
        """From `evaluate_attack`'s dict: its score keys, the rest is the settings."""
        return cls.from_dict({**scores, **(asdict(source) if source else {})})

    def to_dict(self) -> dict[str, Any]:
        scores = {key: getattr(self, key) for key in _SCORE_KEYS}
        return {**self.settings, **scores, **(asdict(self.source) if self.source else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "attack result") -> AttackResult:
        source = _build(AttackSource, data, where) if "checkpoint" in data else None
        settings = {k: v for k, v in data.items() if k not in _SCORE_KEYS and k not in _SOURCE_KEYS}
        scores = {k: v for k, v in data.items() if k in _SCORE_KEYS}
        return _build(cls, {"settings": settings, "source": source, **scores}, where)


@dataclass(frozen=True)
class Sweep(JsonRecord):
    """`sweep.json`: the same attack at several ε (rows in the order asked), from one source."""

    rows: list[AttackResult]
    source: AttackSource | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [row.to_dict() for row in self.rows], **(asdict(self.source) if self.source else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "sweep") -> Sweep:
        if not isinstance(data.get("rows"), list):
            raise RunFileError(f"{where}: no list of rows")
        rows = [AttackResult.from_dict(row, where=f"{where} row {i}") for i, row in enumerate(data["rows"], 1)]
        source = _build(AttackSource, data, where) if "checkpoint" in data else None
        return cls(rows, source)


@dataclass(frozen=True)
class StudyEntry:
    """One experiment of a study: its run (relative to the study folder), its scale, and why it was skipped.

    `train_images` is the number of training images seen per epoch; `val_images` the images evaluated,
    `attack_images` those attacked.
    """

    experiment: str
    model: str
    run: str | None
    scale: str
    train_images: int
    val_images: int
    image_size: int
    epochs: int
    device: str
    attack_images: int | None = None
    skipped: str | None = None
    compare_with: str | None = None  # the seed experiment compared with, for one the seed did not run


@dataclass(frozen=True)
class StudyRecord(JsonRecord):
    """`study.json`: the experiments of a study in order, as the study planned and ran them."""

    scale: str
    root: str
    experiments: list[StudyEntry]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "study record") -> StudyRecord:
        entries = data.get("experiments")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise RunFileError(f"{where}: experiments is not a list of objects")
        rows = [_build(StudyEntry, e, f"{where} experiment {i}") for i, e in enumerate(entries, 1)]
        return _build(cls, {**data, "experiments": rows}, where)
