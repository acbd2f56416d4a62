"""The "study vs this project" table: the seed's numbers beside a study folder's, each row with its scale.

Reads only what the commands wrote (`study.json`, each run's `eval_val.json`, `attack/attack.json`
and `metrics.jsonl`) and the seed's data file (`miniplaces.study.load_seed`). Two rows per
experiment, the seed's and ours; ours carries the difference, and every row says how many training
images per epoch, how many epochs, the image size, the device and how many val images it was
measured on, so a mini run is never read as a full one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from miniplaces.records import AttackResult, EvalResult, RunFileError, StudyEntry, StudyRecord, read_metrics
from miniplaces.rundir import RunDir, StudyFiles
from miniplaces.study import SeedExperiment, SeedResults

MISSING = "—"
HEADERS = ("Experiment", "Source", "Scale", "Val top-1 %", "Val top-5 %", "Δ top-1", "Δ top-5",
           "Attacked top-1 %", "Time ×", "Memory ×", "Note")


@dataclass(frozen=True)
class ComparisonRow:
    """One row: the seed's or this project's numbers for one experiment (None: not measured)."""

    experiment: str
    source: str
    scale: str
    top1: float | None = None
    top5: float | None = None
    delta_top1: float | None = None
    delta_top5: float | None = None
    adv_top1: float | None = None
    time_ratio: float | None = None
    memory_ratio: float | None = None
    note: str = ""

    def cells(self) -> list[str]:
        def number(value: float | None, fmt: str) -> str:
            return MISSING if value is None else format(value, fmt)

        return [self.experiment, self.source, self.scale, number(self.top1, ".2f"), number(self.top5, ".2f"),
                number(self.delta_top1, "+.2f"), number(self.delta_top5, "+.2f"), number(self.adv_top1, ".2f"),
                number(self.time_ratio, ".2f"), number(self.memory_ratio, ".2f"), self.note]


def _seed_row(seed: SeedResults, experiment: SeedExperiment) -> ComparisonRow:
    ratios = experiment.ratios
    note = f"vs {ratios.baseline}, {seed.device}" if ratios is not None else ""
    return ComparisonRow(
        experiment.name, "seed",
        f"{seed.train_images:,} train img/epoch × {experiment.epochs} ep, {seed.image_size} px, {seed.device}; "
        f"val {seed.val_images:,}",
        top1=experiment.top1, top5=experiment.top5, adv_top1=experiment.adv_top1,
        time_ratio=None if ratios is None else ratios.time, memory_ratio=None if ratios is None else ratios.memory,
        note=note,
    )


def _scale(entry: StudyEntry) -> str:
    attacked = f", attack {entry.attack_images:,}" if entry.attack_images else ""
    return (f"{entry.scale}: {entry.train_images:,} train img/epoch × {entry.epochs} ep, {entry.image_size} px, "
            f"{entry.device}; val {entry.val_images:,}{attacked}")


def _read(record_type: type[EvalResult] | type[AttackResult], path: Path) -> EvalResult | AttackResult | None:
    try:
        return record_type.read(path) if path.is_file() else None
    except RunFileError:
        return None


def _ratios(folder: Path, record: StudyRecord, entry: StudyEntry, baseline: str) -> tuple[float | None, float | None]:
    """Our time and memory against `baseline`'s: training time per image over the epochs both ran (the
    first ones: a 2-epoch run against the first 2 of a 5-epoch one's, whose later epochs may run at other
    sides or speeds); memory only where it is the device's own allocation (a CPU process's peak RSS also
    holds what ran before it in the same process)."""
    other = next((e for e in record.experiments if e.experiment == baseline and e.run), None)
    if other is None or entry.run is None:
        return None, None
    ours, theirs = read_metrics(RunDir(folder / entry.run).metrics), read_metrics(RunDir(folder / other.run).metrics)
    if not ours or not theirs:
        return None, None
    both = min(len(ours), len(theirs))
    time = None
    if all(r.images_per_s > 0 for r in (*ours[:both], *theirs[:both])):
        # Every epoch sees the same number of images, so the mean of 1/(images/s) is the time per image.
        time = sum(1 / r.images_per_s for r in ours[:both]) / sum(1 / r.images_per_s for r in theirs[:both])
    memory = None
    if all(r.peak_memory_kind == "cuda_max_allocated" for r in (*ours, *theirs)):
        memory = max(r.peak_memory_mb for r in ours) / max(max(r.peak_memory_mb for r in theirs), 1e-9)
    return time, memory


def _our_row(folder: Path, record: StudyRecord, entry: StudyEntry, seed: SeedExperiment | None) -> ComparisonRow:
    """Our numbers for `entry`, with Δ against `seed`: its own seed experiment or the one it is compared with."""
    source = f"this project ({entry.scale})"
    if entry.skipped or entry.run is None:
        return ComparisonRow(entry.experiment, source, _scale(entry), note=entry.skipped or "not run")
    run = RunDir(folder / entry.run)
    result = _read(EvalResult, run.eval_json("val"))
    attack = _read(AttackResult, run.attack.result)
    top1 = top5 = None
    note = []
    if isinstance(result, EvalResult):
        top1, top5 = result.top1, result.top5
    else:
        note.append("not evaluated yet")
    if seed is not None and seed.name != entry.experiment:
        note.append(f"Δ vs the seed's {seed.name} ({seed.epochs} ep)")
    time = memory = None
    if seed is not None and seed.ratios is not None and seed.name == entry.experiment:
        time, memory = _ratios(folder, record, entry, seed.ratios.baseline)
        note.append(f"vs {seed.ratios.baseline}, {entry.device}" + ("" if memory is not None or time is None
                                                                     else "; memory: CPU peak RSS not comparable"))
    return ComparisonRow(
        entry.experiment, source, _scale(entry), top1=top1, top5=top5,
        delta_top1=None if seed is None or top1 is None else top1 - seed.top1,
        delta_top5=None if seed is None or top5 is None else top5 - seed.top5,
        adv_top1=attack.adv_top1 if isinstance(attack, AttackResult) else None,
        time_ratio=time, memory_ratio=memory, note="; ".join(note),
    )


def comparison_rows(folder: Path | str, seed: SeedResults) -> list[ComparisonRow]:
    """The seed's row and ours for each experiment of the study in `folder` (its `study.json`), in order.

    An experiment the seed did not run follows the seed row of the experiment it is compared with
    (`compare_with`, e.g. the fast recipe after SimpleNet's), its Δ taken against that row.
    """
    files = StudyFiles(folder)
    record = StudyRecord.read(files.record)
    rows: list[ComparisonRow] = []
    for entry in record.experiments:
        published = seed.experiments.get(entry.experiment)
        if published is None and entry.compare_with is not None:
            published = seed.experiments.get(entry.compare_with)
        if published is not None and not any(r.source == "seed" and r.experiment == published.name for r in rows):
            rows.append(_seed_row(seed, published))
        rows.append(_our_row(files.folder, record, entry, published))
    return rows


def comparison_markdown(rows: Sequence[ComparisonRow], attack: str = "") -> str:
    """The table in Markdown, with a line on what "attacked" and the ratios mean."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---:" if 3 <= i <= 9 else "---"
                                                                for i in range(len(HEADERS))) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row.cells()) + " |" for row in rows]
    legend = ("Δ: ours − seed, in points. Time × / Memory ×: training time per image (over the epochs both "
              "ran) and peak memory against the baseline named in the note, on the row's device. — : not measured.")
    if attack:
        legend = f"Attacked: top-1 under {attack}. " + legend
    return "\n".join(lines) + "\n\n" + legend + "\n"
