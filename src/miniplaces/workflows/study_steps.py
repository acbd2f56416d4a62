"""The steps of one study experiment (train, eval, attack, saliency): each proves itself done, or runs.

A step is done only when what it finds on disk is what it wrote. When a step finishes it records the
sha256 of each file it wrote in the run's `study_seal.json` (`SEAL_FILE`, written atomically), with the
settings it ran with and, for every step after training, the hash of the `last.pt` it read. `problem()`
checks all of that again, and the training step also opens both checkpoints and checks their model,
epoch and config against the plan. Whatever is missing, truncated, emptied, swapped or flipped is redone
from the last good state:

- training: a finished run whose checkpoints are intact but whose `metrics.jsonl` or `config.yaml` is
  not what training wrote gets them rewritten (the rows from the seal, the config from `last.pt`); one whose
  `last.pt` is damaged continues from its intact `best.pt` (or copies it back when the last epoch was the
  best); an interrupted run resumes from its `last.pt`; anything else trains again from scratch (the run
  folder is the study's own, and a run is deterministic, so it ends where the first one did);
- eval, attack and saliency: run again (they also follow a retrained `last.pt`).

A finished run without a seal (one written before seals, or killed between its last checkpoint and the
seal) is sealed once its checkpoints and metrics rows pass those checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from miniplaces.attacks.spec import AttackSpec
from miniplaces.config import TrainConfig, config_from_dict, save_config, to_dict
from miniplaces.engine.checkpoint import CheckpointError, load_checkpoint
from miniplaces.fileio import atomic_write_bytes, atomic_write_json
from miniplaces.progress import StartProgress
from miniplaces.records import (
    AttackResult,
    EvalResult,
    MetricsRow,
    RunFileError,
    read_metrics,
    write_metrics,
    write_metrics_csv,
)
from miniplaces.rundir import RunDir, saliency_png

logger = logging.getLogger(__name__)

SEAL_FILE = "study_seal.json"
NOT_RUN = "not run yet"
# Config keys that say where and how fast a run ran, not what it computes: a rerun may change them.
PLACE_KEYS = ("root", "out_dir", "device", "workers", "log_every")

StepStatus = Literal["ran", "resumed", "redone", "repaired", "done", "skipped"]


@dataclass(frozen=True)
class StepOutcome:
    """One step of one experiment: `ran` (first time), `resumed` (training continued), `redone` (what it had
    written failed its check: `why` says how), `repaired` (training's derived files rewritten), `done`
    (found finished) or `skipped` (cannot run; `detail` says why)."""

    experiment: str
    step: str  # train, eval, attack, saliency
    status: StepStatus
    detail: str = ""
    why: str = ""
    seconds: float = 0.0  # wall-clock time this call spent on the step (checking it, and running it if it ran)


# ---------------------------------------------------------------- the seal


def sha256_of(path: Path) -> str | None:
    """The file's sha256 in hex, or None when there is no such file."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_seals(run: RunDir) -> dict[str, dict[str, Any]]:
    """step name → what it recorded when it finished; an unreadable seal proves nothing (an empty dict)."""
    try:
        return RunSeal.read(run)
    except RunFileError:
        return {}


class RunSeal:
    """`<run>/study_seal.json`: {step: {"files": {relative path: sha256 or null}, "settings": …, "after": …}}."""

    @staticmethod
    def path(run: RunDir) -> Path:
        return run.path / SEAL_FILE

    @staticmethod
    def read(run: RunDir) -> dict[str, dict[str, Any]]:
        path = RunSeal.path(run)
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunFileError(f"cannot read {path}: {err}") from err
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise RunFileError(f"{path} holds no mapping of steps")
        return data

    @staticmethod
    def write(run: RunDir, step: str, entry: dict[str, Any] | None) -> None:
        """Record (or with None, forget) one step, keeping the others."""
        seals = read_seals(run)
        if entry is None:
            if step not in seals:
                return
            seals.pop(step)
        else:
            seals[step] = entry
        atomic_write_json(RunSeal.path(run), seals)


def _hashes(run: RunDir, files: list[Path]) -> dict[str, str | None]:
    return {str(p.relative_to(run.path)): sha256_of(p) for p in files}


def _changed(run: RunDir, recorded: dict[str, Any]) -> str | None:
    """The first recorded file that is not what the step wrote, in words; None when all are."""
    for name, digest in recorded.items():
        found = sha256_of(run.path / name)
        if found != digest:
            if found is None:
                return f"{name} is missing"
            return f"{name} is not the file it wrote (its sha256 differs from {SEAL_FILE})"
    return None


# ---------------------------------------------------------------- the steps


class StudyStep(ABC):
    """A step of one experiment: `problem()` says why it is not finished (None when it is), `run()` does it."""

    name: ClassVar[str]
    experiment: str
    rundir: RunDir

    @abstractmethod
    def problem(self) -> str | None:
        """None when the step is proven finished, else why not (`NOT_RUN` when it never ran)."""

    def done(self) -> bool:
        return self.problem() is None

    @abstractmethod
    def summary(self) -> str:
        """A finished step's result in a few words."""

    @abstractmethod
    def run(self, why: str) -> StepOutcome:
        """Do the step (`why`: what `problem()` found) and seal it."""

    def outcome(self, status: StepStatus, detail: str, why: str) -> StepOutcome:
        if status == "ran" and why != NOT_RUN:
            status = "redone"
        return StepOutcome(self.experiment, self.name, status, detail, "" if why == NOT_RUN else why)


def comparable(data: dict[str, Any]) -> dict[str, Any]:
    """A config mapping without the keys a rerun may change (see `PLACE_KEYS`)."""
    kept = {k: v for k, v in data.items() if k not in PLACE_KEYS}
    # Where the starting weights were read from does not change the run once it has a checkpoint.
    kept["model_kwargs"] = {k: v for k, v in dict(kept.get("model_kwargs") or {}).items() if k != "weights"}
    return kept


def config_difference(planned: TrainConfig, found: dict[str, Any]) -> str | None:
    """The first key where a saved config differs from the plan, in words; None when none does.

    A key the saved config lacks counts as its default: the run was written before the key existed and
    trained as the default does (a study folder stays valid when a release adds a key)."""
    want, have = comparable(to_dict(planned)), comparable(found)
    defaults = to_dict(TrainConfig())
    for key in want:
        if key == "amp" and want[key] == "auto":  # a run's config holds what auto chose on its machine
            continue
        there = have.get(key, defaults.get(key))
        if want[key] != there:
            return f"{key}: {there!r} there, {want[key]!r} planned"
    return None


def checkpoint_problem(path: Path, config: TrainConfig, *, finished: bool) -> tuple[dict[str, Any] | None, str | None]:
    """(the checkpoint, None) when `path` opens and holds this plan's model and config (and, `finished`, its
    last epoch); else (None or the checkpoint, what is wrong)."""
    name = f"{path.parent.name}/{path.name}"
    if not path.is_file():
        return None, f"{name} is missing"
    try:
        payload = load_checkpoint(path)
    except CheckpointError as err:
        return None, f"{name} does not open ({err})"
    model = payload["model"]["name"]
    if model != config.model:
        return payload, f"{name} holds model {model!r}, the plan {config.model!r}"
    saved = payload.get("config")
    difference = config_difference(config, saved) if isinstance(saved, dict) else "no config"
    if difference is not None:
        return payload, f"{name} was trained with other settings ({difference})"
    epoch = payload.get("epoch")
    if not isinstance(epoch, int) or epoch > config.epochs:
        return payload, f"{name} is at epoch {epoch!r}, the plan has {config.epochs}"
    if finished and (epoch != config.epochs or payload.get("step_in_epoch")):
        return payload, f"{name} is at epoch {epoch}, not the plan's last ({config.epochs})"
    return payload, None


@dataclass
class _TrainFinding:
    action: Literal["done", "seal", "repair", "restore", "resume", "resume_best", "restart"]
    why: str | None  # None: done
    epoch: int = 0


@dataclass(kw_only=True)
class TrainStep(StudyStep):
    """Train the run (or resume, repair or redo it) until its checkpoints are proven finished."""

    name: ClassVar[str] = "train"
    experiment: str
    rundir: RunDir
    config: TrainConfig
    on_train_step: Callable[[int], None] | None = None
    progress: bool = True
    _found: _TrainFinding | None = field(default=None, init=False, repr=False)

    def _files(self) -> list[Path]:
        run = self.rundir
        return [run.last, run.best, run.metrics, run.config]

    def problem(self) -> str | None:
        self._found = self._find()
        return self._found.why

    def summary(self) -> str:
        return f"{self.config.epochs} epochs"

    def _find(self) -> _TrainFinding:
        run, config = self.rundir, self.config
        sealed = read_seals(run).get("train")
        if sealed is not None:
            recorded = dict(sealed.get("files") or {})
            checkpoints = {k: v for k, v in recorded.items() if k.startswith("checkpoints/")}
            changed = _changed(run, checkpoints) if checkpoints else "no checkpoint hashes"
            if changed is None:
                for path in (run.last, run.best):
                    _, wrong = checkpoint_problem(path, config, finished=path == run.last)
                    if wrong is not None:
                        return _TrainFinding("restart", wrong)
                derived = _changed(run, {k: v for k, v in recorded.items() if k not in checkpoints})
                if derived is not None:
                    return _TrainFinding("repair", derived)
                return _TrainFinding("done", None)
            return self._from_best(recorded, changed)
        if not run.last.is_file():
            if run.holds_training():
                return _TrainFinding("restart", "no checkpoint (it stopped before its first epoch ended)")
            return _TrainFinding("restart", NOT_RUN)
        last, wrong = checkpoint_problem(run.last, config, finished=False)
        if wrong is not None or last is None:
            return _TrainFinding("restart", wrong or "last.pt does not open")
        epoch = int(last["epoch"])
        try:
            rows = read_metrics(run.metrics)
        except RunFileError as err:
            return _TrainFinding("restart", f"{err}, and no {SEAL_FILE} holds the rows")
        if [r.epoch for r in rows[:epoch]] != list(range(1, epoch + 1)):
            return _TrainFinding("restart", f"metrics.jsonl lacks rows of the {epoch} epoch(s) last.pt has trained, "
                                 f"and no {SEAL_FILE} holds them")
        recorded_row = last.get("metrics")
        if epoch > 0 and isinstance(recorded_row, dict) and rows[epoch - 1] != MetricsRow.from_dict(recorded_row):
            return _TrainFinding("restart", f"metrics.jsonl's epoch {epoch} is not the one last.pt recorded")
        # Every finished epoch has a best.pt (the first always improves), and a resume writes it again only if
        # a later epoch is better: a lost one is not resumed into a run without it.
        if epoch > 0:
            _, wrong = checkpoint_problem(run.best, config, finished=False)
            if wrong is not None:
                return _TrainFinding("restart", wrong)
        if epoch < config.epochs or last.get("step_in_epoch"):
            return _TrainFinding("resume", "interrupted", epoch)
        return _TrainFinding("seal", f"finished, but not in {SEAL_FILE} yet")

    def _from_best(self, recorded: dict[str, Any], changed: str) -> _TrainFinding:
        """A finished run whose last.pt is not what training wrote: the last good state is best.pt, when its
        hash is the recorded one (a copy of it when the last epoch was the best); else nothing is proven."""
        run = self.rundir
        best, last = _relative(run, run.best), _relative(run, run.last)
        if recorded.get(best) is None or sha256_of(run.best) != recorded[best]:
            return _TrainFinding("restart", changed)
        payload, wrong = checkpoint_problem(run.best, self.config, finished=False)
        if wrong is not None or payload is None:
            return _TrainFinding("restart", changed)
        if recorded[best] == recorded.get(last) or payload["epoch"] == self.config.epochs:
            return _TrainFinding("restore", changed)
        return _TrainFinding("resume_best", changed, int(payload["epoch"]))

    def run(self, why: str) -> StepOutcome:
        from miniplaces.workflows.train import train

        run, config = self.rundir, self.config
        found = self._found or self._find()
        self._found = None
        if found.action == "repair":
            self._repair()
            return self.outcome("repaired", "rewritten from the checkpoints and the seal", why)
        if found.action == "seal":  # finished and intact, sealed only now
            self._seal()
            return self.outcome("done", f"{config.epochs} epochs; checked and sealed", NOT_RUN)
        if found.action == "restore":  # the last epoch was the best: last.pt held best.pt's state
            atomic_write_bytes(run.last, run.best.read_bytes())
            if sha256_of(run.last) != read_seals(run)["train"]["files"].get(_relative(run, run.last)):
                self._seal()  # the same epoch's state, saved apart: record it (the later steps then rerun)
            return self.outcome("repaired", "last.pt restored from best.pt, the same epoch", why)
        RunSeal.write(run, self.name, None)
        if found.action == "resume_best":
            # Training is deterministic: continuing from best.pt's epoch rewrites the later epochs as they were.
            run.last.unlink(missing_ok=True)
            train(config, resume=run.best, on_step=self.on_train_step, progress=self.progress)
            self._seal()
            return self.outcome("resumed", f"from best.pt's epoch {found.epoch} to {config.epochs}", why)
        if found.action == "resume":
            train(config, resume=run.path, on_step=self.on_train_step, progress=self.progress)
            self._seal()
            return self.outcome("resumed", f"from epoch {found.epoch} to {config.epochs}", NOT_RUN)
        if run.path.exists():
            # The study's own folder (the plan checked its settings): nothing in it is proven, so it goes.
            shutil.rmtree(run.path)
        train(config, on_step=self.on_train_step, progress=self.progress)
        self._seal()
        return self.outcome("ran", f"{config.epochs} epochs", why)

    def _repair(self) -> None:
        """Rewrite metrics.jsonl (and .csv) from the seal's rows and config.yaml from last.pt's config."""
        run = self.rundir
        sealed = read_seals(run)["train"]
        rows = [MetricsRow.from_dict(r, where=f"{RunSeal.path(run)} row") for r in sealed.get("rows") or []]
        write_metrics(run.metrics, rows)
        write_metrics_csv(run.metrics_csv, rows)
        save_config(config_from_dict(load_checkpoint(run.last)["config"], where=str(run.last)), run.config)
        self._seal()

    def _seal(self) -> None:
        run = self.rundir
        rows = [r.to_dict() for r in read_metrics(run.metrics)]
        RunSeal.write(run, self.name, {"files": _hashes(run, self._files()), "rows": rows})


@dataclass(kw_only=True)
class _SealedStep(StudyStep):
    """A step after training: done when its seal names the current `last.pt`, its settings and its files."""

    experiment: str
    rundir: RunDir

    @abstractmethod
    def outputs(self) -> list[Path]:
        """The files the step writes."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What the step's outputs depend on besides `last.pt`."""

    def extra_problem(self) -> str | None:
        """A check of the outputs' content beyond their hashes (None: fine)."""
        return None

    def problem(self) -> str | None:
        run = self.rundir
        seals = read_seals(run)
        entry = seals.get(self.name)
        if entry is None:
            if any(p.exists() for p in self.outputs()):
                return f"its files are not in {SEAL_FILE}"
            return NOT_RUN
        trained = (seals.get("train") or {}).get("files", {}).get(_relative(run, run.last))
        if trained is None or entry.get("after") != trained:
            return "last.pt is not the one it read"
        if entry.get("settings") != self.settings():
            return "it ran with other settings"
        return _changed(run, dict(entry.get("files") or {})) or self.extra_problem()

    def seal(self) -> None:
        run = self.rundir
        trained = read_seals(run).get("train", {}).get("files", {}).get(_relative(run, run.last))
        RunSeal.write(run, self.name, {"after": trained, "settings": self.settings(),
                                       "files": _hashes(run, self.outputs())})


def _relative(run: RunDir, path: Path) -> str:
    return str(path.relative_to(run.path))


@dataclass(kw_only=True)
class EvalStep(_SealedStep):
    """Evaluate `last.pt` on val (the decoded cache), capped at `limit` images."""

    name: ClassVar[str] = "eval"
    config: TrainConfig
    root: Path
    limit: int | None
    expected_images: int
    shown: StartProgress | None = None  # the display of the step's progress (the CLI's), none by default

    def outputs(self) -> list[Path]:
        return [self.rundir.eval_json("val")]

    def settings(self) -> dict[str, Any]:
        return {"limit": self.limit, "batch_size": self.config.batch_size}

    def extra_problem(self) -> str | None:
        try:
            found = EvalResult.read(self.rundir.eval_json("val"))
        except RunFileError as err:
            return str(err)
        if found.epoch != self.config.epochs or found.count != self.expected_images:
            return f"it evaluated epoch {found.epoch} on {found.count} images"
        return None

    def summary(self) -> str:
        return f"top-1 {EvalResult.read(self.rundir.eval_json('val')).top1:.2f}%"

    def run(self, why: str) -> StepOutcome:
        from miniplaces.workflows.evaluate import evaluate_checkpoint

        config = self.config
        result, _ = evaluate_checkpoint(self.rundir.last, self.root, split="val", batch_size=config.batch_size,
                                        device=config.device, workers=config.workers, loader=config.loader,
                                        limit=self.limit, progress=self.shown)
        self.seal()
        return self.outcome("ran", f"top-1 {result.top1:.2f}% on {result.count} images", why)


class AnalysisModel:
    """The model and val split the attack and the saliency share, loaded once and only when one of them runs."""

    def __init__(self, run: RunDir, root: Path, device: str) -> None:
        self.run, self.root, self.device = run, root, device
        self._inputs: Any = None

    def get(self) -> Any:
        from miniplaces.engine.device import resolve_device
        from miniplaces.workflows.analysis import load_for_analysis

        if self._inputs is None:
            self._inputs = load_for_analysis(self.run.last, self.root, device=resolve_device(self.device))
        return self._inputs


@dataclass(kw_only=True)
class AttackStep(_SealedStep):
    """The study's attack on the first `limit` val images, with its grid."""

    name: ClassVar[str] = "attack"
    spec: AttackSpec
    limit: int | None
    model: AnalysisModel
    shown: StartProgress | None = None

    def outputs(self) -> list[Path]:
        return [self.rundir.attack.result, self.rundir.attack.grid]

    def settings(self) -> dict[str, Any]:
        return {**self.spec.to_dict(), "limit": self.limit}

    def summary(self) -> str:
        return f"attacked top-1 {AttackResult.read(self.rundir.attack.result).adv_top1:.2f}%"

    def run(self, why: str) -> StepOutcome:
        from miniplaces.workflows.analysis import attack_report

        report = attack_report(self.model.get(), self.spec, limit=self.limit, batch_size=64, grid=8, seed=0,
                               progress=self.shown)
        self.seal()
        return self.outcome("ran", f"attacked top-1 {report.result.adv_top1:.2f}% on {report.result.images} images",
                            why)


@dataclass(kw_only=True)
class SaliencyStep(_SealedStep):
    """The saliency grid of the first `images` val images."""

    name: ClassVar[str] = "saliency"
    method: str
    images: int
    model: AnalysisModel
    shown: StartProgress | None = None

    def outputs(self) -> list[Path]:
        return [saliency_png(self.rundir.saliency, self.method)]

    def settings(self) -> dict[str, Any]:
        return {"method": self.method, "images": self.images}

    def summary(self) -> str:
        return self.outputs()[0].name

    def run(self, why: str) -> StepOutcome:
        from miniplaces.workflows.analysis import saliency_report

        saliency_report(self.model.get(), method=self.method, n=self.images,
                        title=f"{self.experiment}: {self.method} gradient saliency", progress=self.shown)
        self.seal()
        return self.outcome("ran", self.outputs()[0].name, why)
