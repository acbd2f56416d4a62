"""The run folder: its paths, the typed records of its files, and the one way they are written.

Everything a run leaves on disk goes through `atomic_write`: a temporary file in the
target's folder, fsync, rename. A crash mid-write leaves the previous file intact, and a
temporary file left by a killed writer is removed by the next write of the same target.

`RunDir` names every path of a run; `MetricsRow`, `EvalResult`, `AttackResult` and `Sweep` are
written and read by the same class, so the report reads exactly what the commands wrote.
`claim_run` locks a run folder for the one training that writes it.

This module imports only the standard library (and the project's error base), so every layer
(data, engine, report, workflows) may use it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

from miniplaces.errors import MiniPlacesError

T = TypeVar("T")
R = TypeVar("R", bound="JsonRecord")


class RunWriteError(MiniPlacesError, OSError):
    """A file cannot be written: a read-only or full disk, or a folder that is a file. Still an `OSError`."""


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete the temporary files a killed `atomic_write(path, …)` left beside `path`."""
    removed = []
    if path.parent.is_dir():
        for leftover in path.parent.glob(f"{_tmp_prefix(path)}*.tmp"):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(handle)` on a temporary file beside `path`, fsync it, then rename it to `path`.

    The folder is created if needed, and the file gets the permissions `open` would give it (0o666 less
    the umask). On any failure the temporary file is removed and the previous `path` (if any) is untouched.
    An `OSError` (full disk, no permission) becomes a `RunWriteError` that names `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(path)
        fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes the file 0600; give it what `open` would, so teammates can read a shared run.
            os.chmod(tmp_name, 0o666 & ~current_umask())
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, RunWriteError):
            raise _write_error(path, err) from err
        raise
    return path


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (another thread may be creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere the only way to read it is to set it and put it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _write_error(path: Path, err: OSError) -> RunWriteError:
    reason = err.strerror or str(err)
    culprit = Path(err.filename) if err.filename else None  # e.g. a folder on the way that is a file
    shown = culprit is not None and culprit not in (path, path.parent) and culprit.parent != path.parent
    where = f" ({culprit})" if shown else ""
    return RunWriteError(f"cannot write {path}: {reason}{where}; choose a writable folder with free space")


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


# ---------------------------------------------------------------- the paths of a run

METRICS_FILE = "metrics.jsonl"
METRICS_CSV = "metrics.csv"


class RunFileError(MiniPlacesError):
    """A file of a run folder cannot be read as what rundir writes there."""


class AttackFiles:
    """What an attack writes into its folder (`<run>/attack/` unless told otherwise)."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.result = self.folder / "attack.json"  # an `AttackResult`
        self.grid = self.folder / "attack_grid.png"
        self.sweep = self.folder / "sweep.json"  # a `Sweep`
        self.sweep_plot = self.folder / "sweep.png"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AttackFiles) and other.folder == self.folder

    def __repr__(self) -> str:
        return f"AttackFiles({str(self.folder)!r})"


class RunDir:
    """The folder of one training run and every file the commands leave in it.

    ```
    config.yaml                    the resolved config (`miniplaces train`)
    .train.lock                    the pid of the last process that trained it, locked while it trains
    metrics.jsonl                  one `MetricsRow` per epoch
    metrics.csv                    the same rows as CSV (a header of `METRIC_KEYS`; empty cell = null)
    checkpoints/last.pt, best.pt   training state (every epoch / best val top-1)
    checkpoints/eval_<split>.json  an `EvalResult` (`miniplaces eval`)
    tb/                            TensorBoard scalars per epoch; tb/steps/ per step
    saliency/saliency_<method>.png (`miniplaces saliency`)
    attack/attack.json             an `AttackResult`, with attack_grid.png (`miniplaces attack`)
    attack/sweep.json              a `Sweep`, with sweep.png
    export/<format>/               an exported model with its config.json (`miniplaces export`)
    ```
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.config = self.path / "config.yaml"
        self.metrics = self.path / METRICS_FILE
        self.metrics_csv = self.path / METRICS_CSV
        self.checkpoints = self.path / "checkpoints"
        self.last, self.best = self.checkpoints / "last.pt", self.checkpoints / "best.pt"
        self.lock = self.path / ".train.lock"  # locked by the process training the run (`claim_run`)
        self.tensorboard = self.path / "tb"
        self.tensorboard_steps = self.tensorboard / "steps"  # per-step scalars, at the global step
        self.saliency = self.path / "saliency"
        self.attack = AttackFiles(self.path / "attack")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def of_checkpoint(cls, checkpoint: Path | str) -> RunDir:
        """The run a checkpoint belongs to: `runs/<name>` for `runs/<name>/checkpoints/x.pt`, else its folder.

        The path is resolved first, so `best.pt` given from inside `checkpoints/` still finds its run.
        """
        parent = Path(checkpoint).resolve().parent
        return cls(parent.parent if parent.name == "checkpoints" else parent)

    def eval_json(self, split: str) -> Path:
        return eval_json_beside(self.last, split)

    def export(self, fmt: str) -> Path:
        """The folder `miniplaces export` writes a format into by default."""
        return self.path / "export" / fmt

    def is_run(self) -> bool:
        """Whether training has written its first file here (what `miniplaces report` takes as a run)."""
        return self.metrics.is_file()

    def holds_training(self) -> bool:
        """Whether a run (finished, running or interrupted) already lives here."""
        return self.metrics.exists() or self.checkpoints.exists()

    def eval_files(self) -> dict[str, Path]:
        """split → eval JSON of the checkpoints, in split order."""
        return {p.stem.removeprefix("eval_"): p for p in sorted(self.checkpoints.glob("eval_*.json"))}

    def images(self) -> list[Path]:
        """The attack's and the saliency's PNG files."""
        return sorted(self.attack.folder.glob("*.png")) + sorted(self.saliency.glob("*.png"))


def eval_json_beside(checkpoint: Path | str, split: str) -> Path:
    """Where `miniplaces eval` writes by default: `eval_<split>.json` beside the checkpoint."""
    return Path(checkpoint).parent / f"eval_{split}.json"


def saliency_png(folder: Path | str, method: str) -> Path:
    return Path(folder) / f"saliency_{method}.png"


# ---------------------------------------------------------------- typed records


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFileError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise RunFileError(f"{path} holds no JSON object")
    return data


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    """`cls(**data)` for a record's own keys; a missing key is a `RunFileError` naming `where`."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as err:
        raise RunFileError(f"{where}: {err}") from err


@dataclass(frozen=True)
class MetricsRow:
    """One epoch of `metrics.jsonl`: accuracies in percent, memory in MB of `peak_memory_kind`."""

    epoch: int
    train_loss: float
    train_top1: float
    train_top5: float
    val_loss: float
    val_top1: float
    val_top5: float
    lr: float
    epoch_time_s: float
    images_per_s: float
    peak_memory_mb: float
    peak_memory_kind: str
    # The EMA's validation (config key `ema`); null when the run keeps no EMA.
    val_loss_ema: float | None = None
    val_top1_ema: float | None = None
    val_top5_ema: float | None = None

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


# ---------------------------------------------------------------- a study: a folder of runs


class StudyFiles:
    """What `miniplaces study` writes into its folder: one run per experiment, `study.json`, the report."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.runs = self.folder / "runs"
        self.record = self.folder / "study.json"  # a `StudyRecord`
        self.report = self.folder / "report"

    def run(self, experiment: str) -> RunDir:
        return RunDir(self.runs / experiment)


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


# ---------------------------------------------------------------- the run folder, claimed by one training

logger = logging.getLogger(__name__)

class RunExistsError(MiniPlacesError):
    """A new run would overwrite a run folder that already holds one."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir


class RunBusyError(MiniPlacesError):
    """Another live process holds the run folder (it is training or resuming that run)."""


@dataclass
class RunClaim:
    """This process's hold on a run folder: an open, exclusively locked `.train.lock` (see `claim_run`)."""

    run: RunDir
    fd: int
    reused: bool  # a folder a previous start left without a checkpoint, started again

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the lock; the file stays (unlinking it would race a claimer)
            self.fd = -1


def claim_run(run: RunDir, *, fresh: bool) -> RunClaim:
    """Take `run`'s folder for this process, before anything is built or written in it.

    The folder is created if needed, then `.train.lock` in it is locked (`flock`, exclusive, not
    waiting): a second process gets `RunBusyError`, whatever the timing, and the kernel drops the
    lock when its holder dies, even by SIGKILL. A `fresh` start then refuses a folder that holds a
    checkpoint (`RunExistsError`: resume it instead), and takes over one that holds none (a start
    killed before its first checkpoint), saying so in the log.
    """
    try:
        run.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            run.path.mkdir()
            created = True
        except FileExistsError:
            if not run.path.is_dir():
                raise RunWriteError(f"cannot create the run directory {run.path}: a file of that name exists; "
                                    "give the run another name") from None
            created = False
        fd = os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunWriteError(f"cannot create the run directory {run.path}: {err.strerror or err}; "
                            "choose a writable out_dir") from err
    if not _lock(fd):
        owner = _owner(fd)
        os.close(fd)
        raise RunBusyError(f"run directory {run.path} is in use by another training (pid {owner}); wait for it "
                           "to end, or give this run another name")
    pid = f"{os.getpid()}\n".encode()
    os.pwrite(fd, pid, 0)
    os.ftruncate(fd, len(pid))
    claim = RunClaim(run, fd, reused=False)
    if fresh and not created:
        # last.pt makes a run (it is what resumes); a best.pt alone is the first epoch's, cut off before
        # last.pt was written, and a restart writes both again.
        if run.last.exists():
            claim.release()
            raise RunExistsError(f"run directory {run.path} already holds a run; resume it, or give the new run "
                                 "another name (config key 'name')", run.path)
        if run.holds_training() or run.config.exists():
            claim.reused = True
            logger.warning("run directory %s holds no checkpoint (a start stopped before its first epoch ended); "
                           "starting it again from scratch", run.path)
    return claim


def _owner(fd: int) -> str:
    """The pid the lock's holder wrote; a holder that has just taken the lock gets a moment to write it."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text:
            return text
        time.sleep(0.005)
    return "unknown"

def _lock(fd: int) -> bool:
    """Lock `fd` exclusively without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the folder's creation is then the only guard
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
