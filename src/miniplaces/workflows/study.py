"""`plan_study` and `run_study`: the seed study's experiments in one call, with its numbers beside ours.

Each experiment is `configs/<name>.yaml` with the keys of a scale (`miniplaces.study`'s
`scales.yaml`: `full` is the seed's settings, `mini` the CPU-sized study) applied by the config
machinery, trained into `<out>/runs/<name>` (a `RunDir`), then evaluated on val, attacked with
the seed's attack and explained with a saliency grid. The report (with the "study vs this
project" table) goes to `<out>/report`, and `<out>/study.json` (a `StudyRecord`) records what
was planned and why an experiment was skipped.

Resumable without a state file of its own: a step is done when the run's files say so (as many
metrics rows as epochs and `last.pt`; an eval JSON of the last epoch; an `attack.json` of the
seed's attack on as many images; the saliency PNG). A run interrupted mid-way continues exactly
from `last.pt` (`train(..., resume=run)`).

Planning checks everything a user can get wrong (configs, weights file, a folder holding runs of
other settings) before any training, so a study never fails half-way on its input.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from miniplaces.attacks.spec import AttackSpec
from miniplaces.config import TrainConfig, apply_mapping, load_config, resolve, to_dict
from miniplaces.data.layout import read_split
from miniplaces.engine.device import resolve_device
from miniplaces.errors import MiniPlacesError
from miniplaces.models.resnet import read_state_dict
from miniplaces.presets import presets_dir
from miniplaces.records import AttackResult, EvalResult, RunFileError, StudyEntry, StudyRecord, read_metrics
from miniplaces.report import Report, build_report
from miniplaces.rundir import RunDir, StudyFiles, saliency_png
from miniplaces.study import Scale, SeedResults, load_scales, load_seed

logger = logging.getLogger(__name__)

SALIENCY_METHOD = "vanilla"
# Config keys that say where and how fast a run ran, not what it computes: a rerun may change them.
_PLACE_KEYS = ("root", "out_dir", "device", "workers", "log_every")


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


StepStatus = Literal["ran", "resumed", "done", "skipped"]


@dataclass(frozen=True)
class StepOutcome:
    """One step of one experiment: `ran`, `resumed` (training continued), `done` (found finished) or
    `skipped` (cannot run; `detail` says why)."""

    experiment: str
    step: str  # train, eval, attack, saliency
    status: StepStatus
    detail: str = ""


@dataclass
class StudyOutcome:
    plan: StudyPlan
    steps: list[StepOutcome] = field(default_factory=list)
    report: Report | None = None

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
            raise StudyError(f"no config for the study's experiment {name!r}: {path} does not exist "
                             f"(the study reads <experiment>.yaml from {configs})")
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


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in data.items() if k not in _PLACE_KEYS}
    # Where the starting weights were read from does not change the run once it has a checkpoint.
    kept["model_kwargs"] = {k: v for k, v in dict(kept.get("model_kwargs") or {}).items() if k != "weights"}
    return kept


def _check_same_settings(run: RunDir, config: TrainConfig) -> None:
    """A run already in the folder must be this experiment at this scale, or the study would mix two."""
    if not run.config.is_file():
        return
    try:
        saved = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise StudyError(f"cannot read {run.config}: {err}") from err
    if not isinstance(saved, dict):
        raise StudyError(f"{run.config} holds no config mapping")
    planned, found = _comparable(to_dict(config)), _comparable(saved)
    for key in planned:
        if planned[key] != found.get(key):
            raise StudyError(f"{run.path} holds a run with other settings ({key}: {found.get(key)!r} there, "
                             f"{planned[key]!r} planned); give the study another output folder")


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
) -> StudyOutcome:
    """Run the plan's steps that are not finished yet, then write `study.json` and the report.

    `on_step` hears each step's outcome as it ends; `on_train_step` is passed to `train`.
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
            tell(_train_step(experiment, on_train_step, progress))
            tell(_eval_step(plan, experiment, progress))
            for step in _analysis_steps(plan, experiment):
                tell(step)
        outcome.report = write_study_report(plan.files.folder, plan.seed, title=f"miniplaces study ({plan.scale.name})",
                                            attack=plan.attack.describe())
    return outcome


def _trained(run: RunDir, config: TrainConfig) -> bool:
    rows = read_metrics(run.metrics)
    return run.last.is_file() and bool(rows) and rows[-1].epoch == config.epochs and len(rows) == config.epochs


def _train_step(experiment: PlannedExperiment, on_train_step: Callable[[int], None] | None,
                progress: bool) -> StepOutcome:
    from miniplaces.workflows.train import train

    run, config = experiment.run, experiment.config
    if _trained(run, config):
        return StepOutcome(experiment.name, "train", "done", f"{config.epochs} epochs")
    if run.last.is_file():
        done = len(read_metrics(run.metrics))
        train(config, resume=run.path, on_step=on_train_step, progress=progress)
        return StepOutcome(experiment.name, "train", "resumed", f"from epoch {done} to {config.epochs}")
    if run.holds_training():
        # Stopped before its first checkpoint: nothing to resume, and the folder is the study's own.
        shutil.rmtree(run.path)
    train(config, on_step=on_train_step, progress=progress)
    return StepOutcome(experiment.name, "train", "ran", f"{config.epochs} epochs")


def _eval_step(plan: StudyPlan, experiment: PlannedExperiment, progress: bool) -> StepOutcome:
    from miniplaces.workflows.evaluate import evaluate_checkpoint

    run, config = experiment.run, experiment.config
    path = run.eval_json("val")
    try:
        found = EvalResult.read(path) if path.is_file() else None
    except RunFileError:
        found = None  # unreadable: evaluate again
    if found is not None and found.epoch == config.epochs and found.count == experiment.entry.val_images:
        return StepOutcome(experiment.name, "eval", "done", f"top-1 {found.top1:.2f}%")
    result, _ = evaluate_checkpoint(run.last, plan.root, split="val", batch_size=config.batch_size,
                                    device=config.device, workers=config.workers, loader=config.loader,
                                    limit=plan.scale.eval_images, progress=progress)
    return StepOutcome(experiment.name, "eval", "ran", f"top-1 {result.top1:.2f}% on {result.count} images")


def _attack_done(plan: StudyPlan, experiment: PlannedExperiment) -> AttackResult | None:
    path = experiment.run.attack.result
    try:
        found = AttackResult.read(path) if path.is_file() else None
    except RunFileError:
        return None
    if found is None or found.settings != plan.attack.to_dict() or found.source is None:
        return None
    return found if found.source.limit == plan.scale.attack_images else None


def _analysis_steps(plan: StudyPlan, experiment: PlannedExperiment) -> list[StepOutcome]:
    """The seed's attack and the saliency grid; the model is loaded only when one of them is not done."""
    from miniplaces.workflows.analysis import attack_report, load_for_analysis, saliency_report

    run = experiment.run
    attacked = _attack_done(plan, experiment)
    grid = saliency_png(run.saliency, SALIENCY_METHOD)
    steps = []
    inputs = None
    if attacked is None or not grid.is_file():
        inputs = load_for_analysis(run.last, plan.root, device=resolve_device(experiment.config.device))
    if attacked is not None:
        steps.append(StepOutcome(experiment.name, "attack", "done", f"attacked top-1 {attacked.adv_top1:.2f}%"))
    else:
        assert inputs is not None
        report = attack_report(inputs, plan.attack, limit=plan.scale.attack_images, batch_size=64, grid=8, seed=0)
        steps.append(StepOutcome(experiment.name, "attack", "ran",
                                 f"attacked top-1 {report.result.adv_top1:.2f}% on {report.result.images} images"))
    if grid.is_file():
        steps.append(StepOutcome(experiment.name, "saliency", "done", grid.name))
    else:
        assert inputs is not None
        saliency_report(inputs, method=SALIENCY_METHOD, n=plan.scale.saliency_images,
                        title=f"{experiment.name}: {SALIENCY_METHOD} gradient saliency")
        steps.append(StepOutcome(experiment.name, "saliency", "ran", grid.name))
    return steps


def write_study_report(folder: Path | str, seed: SeedResults, title: str = "miniplaces study",
                       attack: str = "") -> Report:
    """The report of a study folder: its runs' report plus the "study vs this project" table."""
    from miniplaces.report.study import comparison_rows

    files = StudyFiles(folder)
    record = StudyRecord.read(files.record)
    runs = [files.folder / e.run for e in record.experiments if e.run and RunDir(files.folder / e.run).is_run()]
    return build_report(runs, files.report, title=title, comparison=comparison_rows(files.folder, seed),
                        attack=attack)
