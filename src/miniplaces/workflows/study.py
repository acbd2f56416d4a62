"""`plan_study` and `run_study`: the seed study's experiments in one call, with its numbers beside ours.

Each experiment is `configs/<name>.yaml` with the keys of a scale (`miniplaces.study`'s
`scales.yaml`: `full` is the seed's settings, `mini` the CPU-sized study) applied by the config
machinery, trained into `<out>/runs/<name>` (a `RunDir`), then evaluated on val, attacked with
the seed's attack and explained with a saliency grid. The report (with the "study vs this
project" table) goes to `<out>/report`, and `<out>/study.json` (a `StudyRecord`) records what
was planned and why an experiment was skipped.

Resumable, and trusting only what it has checked: each experiment is a list of steps
(`miniplaces.workflows.study_steps`: train, eval, attack, saliency), each of which proves itself
finished (its files' hashes, recorded in the run's `study_seal.json` when it finished, and for
training both checkpoints opened and matched against the plan) or runs: from `last.pt` when a run
was interrupted (`train(..., resume=run)`), from scratch when its files are damaged.

Planning checks everything a user can get wrong (configs, weights file, a folder holding runs of
other settings) before any training, so a study never fails half-way on its input.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from miniplaces.attacks.spec import AttackSpec
from miniplaces.config import TrainConfig, apply_mapping, load_config, load_yaml, resolve
from miniplaces.data.layout import read_split
from miniplaces.engine.checkpoint import CheckpointError, load_checkpoint
from miniplaces.engine.device import resolve_device
from miniplaces.errors import MiniPlacesError
from miniplaces.models.resnet import read_state_dict
from miniplaces.presets import presets_dir
from miniplaces.progress import StartProgress, prefixed
from miniplaces.records import StudyEntry, StudyRecord
from miniplaces.report import Report, build_report
from miniplaces.rundir import RunDir, StudyFiles
from miniplaces.study import Scale, SeedResults, load_scales, load_seed
from miniplaces.workflows.study_steps import (
    AnalysisModel,
    AttackStep,
    EvalStep,
    SaliencyStep,
    StepOutcome,
    StepStatus,
    StudyStep,
    TrainStep,
    config_difference,
    read_seals,
    sha256_of,
)

__all__ = ["PlannedExperiment", "StepOutcome", "StepStatus", "StudyError", "StudyOutcome", "StudyPlan",
           "StudyStep", "plan_study", "run_study", "study_steps", "write_study_report"]

logger = logging.getLogger(__name__)

SALIENCY_METHOD = "vanilla"


class StudyError(MiniPlacesError):
    """The study cannot be planned as asked (configs, weights, or an output folder of another study)."""


@dataclass(frozen=True)
class PlannedExperiment:
    """One experiment: its resolved config (as its run will save it), its run folder, its record entry."""

    name: str
    config: TrainConfig
    run: RunDir
    entry: StudyEntry

    @property
    def skipped(self) -> str | None:
        return self.entry.skipped


@dataclass(frozen=True)
class StudyPlan:
    """Everything `run_study` does, decided before it starts."""

    files: StudyFiles
    root: Path
    scale: Scale
    seed: SeedResults
    attack: AttackSpec
    experiments: list[PlannedExperiment]
    threads: int | None

    def record(self) -> StudyRecord:
        return StudyRecord(scale=self.scale.name, root=str(self.root), experiments=[e.entry for e in self.experiments])


@dataclass
class StudyOutcome:
    plan: StudyPlan
    steps: list[StepOutcome] = field(default_factory=list)
    report: Report | None = None

    def seconds_by_step(self) -> dict[str, float]:
        """step name (train, eval, attack, saliency) → wall-clock seconds over the experiments, in step order."""
        totals: dict[str, float] = {}
        for s in self.steps:
            totals[s.step] = totals.get(s.step, 0.0) + s.seconds
        return totals

    @property
    def nothing_ran(self) -> bool:
        """Whether every step was found finished or skipped (a rerun of a finished study)."""
        return all(s.status in ("done", "skipped") for s in self.steps)


# ---------------------------------------------------------------- planning


def default_configs_dir() -> Path:
    """`./configs` when it holds the study's configs, else the packaged presets (`miniplaces.presets`)."""
    here = Path.cwd() / "configs"
    if (here / "simplenet.yaml").is_file():
        return here
    return presets_dir()


def missing_weights_reason() -> str | None:
    """Why resnet18 cannot start from ImageNet weights here (None when torch.hub's cache has them)."""
    from miniplaces.models.resnet import imagenet_cache_path

    cached = imagenet_cache_path()
    if cached.is_file():
        return None
    shown = str(cached.parent).replace(str(Path.home()), "~", 1)
    return f"skipped: no ImageNet weights (put {cached.name} in {shown}/, or give its path; nothing is downloaded)"


def plan_study(
    root: Path | str,
    out: Path | str,
    *,
    scale: str | Scale = "mini",
    experiments: Sequence[str] | None = None,
    configs_dir: Path | str | None = None,
    resnet_weights: Path | str | None = None,
    device: str = "auto",
    threads: int | None = None,
    seed_file: Path | str | None = None,
    scales_file: Path | str | None = None,
) -> StudyPlan:
    """Plan the study: one resolved config per experiment (the seed file's, in its order, or `experiments`).

    Args:
        scale: a name in the scales file (`full`, `mini`, `fast`) or a `Scale`.
        experiments: these experiments (each a `configs/<name>.yaml`) instead of the scale's.
        resnet_weights: a resnet18 ImageNet state dict; default torch.hub's cache. Without either, the
            experiments that start from ImageNet weights are skipped (never downloaded).
        threads: torch threads while the study runs; None takes the scale's.
    """
    root = Path(root).resolve()
    seed = load_seed(seed_file)
    if isinstance(scale, str):
        scales = load_scales(scales_file)
        if scale not in scales:
            raise StudyError(f"unknown study scale {scale!r}; choose one of {', '.join(scales)}")
        scale = scales[scale]
    names = list(experiments) if experiments is not None else scale.names(seed)
    if not names:
        raise StudyError("no experiments chosen; name at least one (each a configs/<name>.yaml)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StudyError(f"experiment {repeated[0]!r} is named twice; name each experiment once")
    configs = Path(configs_dir) if configs_dir is not None else default_configs_dir()
    if resnet_weights is not None and not Path(resnet_weights).is_file():
        raise StudyError(f"resnet18 weights file {resnet_weights} does not exist")
    if resnet_weights is not None:
        read_state_dict(resnet_weights)  # a damaged file is refused now, not after the other experiments trained
    files = StudyFiles(out)
    train_count, val_count = len(read_split(root, "train")), len(read_split(root, "val"))
    torch_device = resolve_device(device)
    device_label = torch_device.type
    if torch_device.type == "cuda":
        device_label = f"cuda ({torch.cuda.get_device_name(torch_device)})"
    planned = []
    for name in names:
        path = configs / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in configs.glob("*.yaml"))) or "none"
            raise StudyError(f"no config for the study's experiment {name!r}: {path} does not exist; the "
                             f"experiments with a config in {configs}: {known}")
        config = load_config(path)
        apply_mapping(config, scale.config_for(name), f"scale {scale.name!r} ({name})")
        config = dataclasses.replace(config, root=str(root), out_dir=str(files.runs), name=name, device=device)
        run = files.run(name)
        skipped = None
        if config.model_kwargs.get("weights") == "imagenet":
            if resnet_weights is not None:
                config.model_kwargs = {**config.model_kwargs, "weights": str(Path(resnet_weights).resolve())}
            elif not run.last.is_file():  # a run with a checkpoint holds its weights already
                skipped = missing_weights_reason()
        config = resolve(config)
        _check_same_settings(run, config)
        batches = train_count // config.batch_size
        if config.limit_train_batches is not None:
            batches = min(batches, config.limit_train_batches)
        entry = StudyEntry(
            experiment=name, model=config.model, run=None if skipped else str(run.path.relative_to(files.folder)),
            scale=scale.name, train_images=batches * config.batch_size,
            val_images=_eval_count(scale.eval_images, config.batch_size, val_count),
            attack_images=min(scale.attack_images or val_count, val_count), image_size=config.image_size,
            epochs=config.epochs, device=device_label, skipped=skipped, compare_with=scale.compare_with.get(name),
        )
        planned.append(PlannedExperiment(name, config, run, entry))
    attack = AttackSpec.from_mode(seed.attack.mode, eps=seed.attack.eps, steps=seed.attack.steps)
    return StudyPlan(files, root, scale, seed, attack, planned, threads if threads is not None else scale.threads)


def _eval_count(limit: int | None, batch_size: int, available: int) -> int:
    """Images an evaluation capped at `limit` sees: whole batches, at most the split."""
    return available if limit is None else min(math.ceil(limit / batch_size) * batch_size, available)


def _check_same_settings(run: RunDir, config: TrainConfig) -> None:
    """A run already in the folder must be this experiment at this scale, or the study would mix two."""
    found, where = _saved_settings(run)
    if found is None:
        return
    difference = config_difference(config, found)
    if difference is not None:
        raise StudyError(f"{run.path} holds a run with other settings ({difference}), read from {where}; "
                         f"delete {run.path} to train it as planned, or give the study another output folder")


def _saved_settings(run: RunDir) -> tuple[dict[str, Any] | None, str]:
    """The config the run in the folder trained with, and the file it was read from; (None, "") when none.

    `config.yaml` when it is the file training wrote (or nothing recorded otherwise); else `last.pt`'s own
    config, so a deleted or replaced `config.yaml` never skips the check.
    """
    sealed = (read_seals(run).get("train") or {}).get("files") or {}
    recorded = sealed.get("config.yaml")
    if run.config.is_file() and (recorded is None or sha256_of(run.config) == recorded):
        try:
            saved = load_yaml(run.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            saved = None  # unreadable: the checkpoint says what ran
        if isinstance(saved, dict):
            return saved, run.config.name
    if run.last.is_file():
        try:
            checkpoint = load_checkpoint(run.last)
        except CheckpointError:
            return None, ""  # nothing readable says what ran: the train step redoes the run
        if isinstance(checkpoint.get("config"), dict):
            return checkpoint["config"], f"{run.last.parent.name}/{run.last.name}"
    return None, ""


# ---------------------------------------------------------------- running


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_study(
    plan: StudyPlan,
    *,
    on_step: Callable[[StepOutcome], None] | None = None,
    on_train_step: Callable[[int], None] | None = None,
    progress: bool = True,
    step_progress: StartProgress | None = None,
) -> StudyOutcome:
    """Run the plan's steps that are not finished yet, then write `study.json` and the report.

    `on_step` hears each step's outcome as it ends; `on_train_step` is passed to `train`; `step_progress`
    shows the progress of the eval, attack and saliency steps.
    Raises `TrainingInterrupted` after SIGINT/SIGTERM (rerun the study to continue).
    """
    outcome = StudyOutcome(plan)

    def tell(step: StepOutcome) -> None:
        outcome.steps.append(step)
        logger.debug("%s %s: %s%s", step.experiment, step.step, step.status, f" ({step.detail})" if step.detail else "")
        if on_step is not None:
            on_step(step)

    plan.record().write(plan.files.record)
    with _torch_threads(plan.threads):
        for experiment in plan.experiments:
            if experiment.skipped:
                tell(StepOutcome(experiment.name, "train", "skipped", experiment.skipped))
                continue
            for step in study_steps(plan, experiment, on_train_step=on_train_step, progress=progress,
                                    shown=prefixed(step_progress, experiment.name)):
                started = time.perf_counter()
                why = step.problem()
                if why is None:
                    found = StepOutcome(experiment.name, step.name, "done", step.summary())
                else:
                    logger.debug("%s %s: %s", experiment.name, step.name, why)
                    found = step.run(why)
                tell(dataclasses.replace(found, seconds=time.perf_counter() - started))
        outcome.report = write_study_report(plan.files.folder, plan.seed, title=f"miniplaces study ({plan.scale.name})",
                                            attack=plan.attack.describe())
    return outcome


def study_steps(plan: StudyPlan, experiment: PlannedExperiment, *,
                on_train_step: Callable[[int], None] | None = None, progress: bool = True,
                shown: StartProgress | None = None) -> list[StudyStep]:
    """One experiment's steps in order: train, eval, attack, saliency (the last two share one loaded model);
    `progress` is the training's own display, `shown` the display of the other steps' progress."""
    run, config, name = experiment.run, experiment.config, experiment.name
    model = AnalysisModel(run, plan.root, config.device)
    return [
        TrainStep(experiment=name, rundir=run, config=config, on_train_step=on_train_step, progress=progress),
        EvalStep(experiment=name, rundir=run, config=config, root=plan.root, limit=plan.scale.eval_images,
                 expected_images=experiment.entry.val_images, shown=shown),
        AttackStep(experiment=name, rundir=run, spec=plan.attack, limit=plan.scale.attack_images, model=model,
                   shown=shown),
        SaliencyStep(experiment=name, rundir=run, method=SALIENCY_METHOD, images=plan.scale.saliency_images,
                     model=model, shown=shown),
    ]


def write_study_report(folder: Path | str, seed: SeedResults, title: str = "miniplaces study",
                       attack: str = "") -> Report:
    """The report of a study folder: its runs' report plus the "study vs this project" table."""
    from miniplaces.report.study import comparison_rows

    files = StudyFiles(folder)
    record = StudyRecord.read(files.record)
    runs = [files.folder / e.run for e in record.experiments if e.run and RunDir(files.folder / e.run).is_run()]
    return build_report(runs, files.report, title=title, comparison=comparison_rows(files.folder, seed),
                        attack=attack)
