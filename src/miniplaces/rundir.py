"""The run folder: the paths of its files, and the lock of the one training that writes it.

`RunDir` names every path of a run (`StudyFiles` those of a study, `AttackFiles` those of an attack);
what the files hold is `miniplaces.records`', and how they are written `miniplaces.fileio`'s.
`claim_run` locks a run folder for the one training that writes it.

This module imports only the standard library (and the project's own file modules), so every layer
(data, engine, report, workflows) may use it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from miniplaces.errors import MiniPlacesError
from miniplaces.fileio import RunWriteError

METRICS_FILE = "metrics.jsonl"
METRICS_CSV = "metrics.csv"


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
