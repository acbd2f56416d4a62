"""The one-command tour: data → train SimpleNet → evaluate → saliency → attack → report.

`run_demo` calls the same library functions as `miniplaces synth`, `train`, `eval`,
`saliency`, `attack` and `report`, in one process, and tells the caller about each phase
through `on_phase` (the command line prints them). Without a dataset it makes a small
synthetic one (reused on the next run), sized so that the whole tour takes a few minutes
on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from miniplaces.attacks.spec import AttackSpec
from miniplaces.errors import MiniPlacesError
from miniplaces.fileio import atomic_write_json
from miniplaces.records import AttackResult, EvalResult, read_metrics
from miniplaces.rundir import RunDir

SYNTH_MARKER = "demo_synth.json"
# Synthetic scenes differ in colour and shape, so a model of them needs a larger ε than real scenes
# before it breaks: the demo sweeps up to 16/255 and reports the attack at 8/255.
DEFAULT_SWEEP = (4 / 255, 8 / 255, 16 / 255)

PhaseCallback = Callable[[str, str, float | None], None]


@dataclass
class DemoOptions:
    """What the demo does; the defaults take a few minutes on a 2-core CPU.

    `root=None` makes (or reuses) a synthetic dataset under `out/data`.
    """

    out: Path = Path("demo")
    root: Path | None = None
    epochs: int = 5
    image_size: int = 64
    batch_size: int = 64
    lr: float = 0.05
    classes: int = 10
    per_class: int = 80
    val_per_class: int = 20
    device: str = "auto"
    workers: int = 2
    loader: str = "cache"
    limit_train_batches: int | None = None
    limit_val_batches: int | None = None
    saliency_images: int = 16
    attack_images: int = 64
    attack: AttackSpec = AttackSpec(kind="pgd", target="untargeted", eps=8 / 255, steps=10)
    sweep: tuple[float, ...] = DEFAULT_SWEEP
    seed: int = 0
    # Torch intra-op threads during the demo; None keeps torch's setting. 1 helps on a busy machine: there,
    # OpenMP threads waiting for each other made every step many times slower (docs/benchmarks.md, the demo).
    threads: int | None = None
    # Also train simplenet_unfold (SimpleNet on UnfoldConv2d) with the same settings, so the report's
    # time and memory figure compares the two convolutions.
    unfold: bool = True


@dataclass
class DemoResult:
    root: Path
    run_dir: Path
    report_dir: Path
    html: Path
    evaluation: EvalResult
    attack: AttackResult
    table: str
    seconds: dict[str, float] = field(default_factory=dict)


def synthetic_data(options: DemoOptions) -> tuple[Path, bool]:
    """The demo's synthetic dataset under `out/data`, made once and reused while its settings match."""
    from miniplaces.data.synth import synthesize

    root = options.out / "data"
    settings = {"classes": options.classes, "per_class": options.per_class,
                "val_per_class": options.val_per_class, "image_size": options.image_size, "seed": options.seed}
    marker = root / SYNTH_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == settings:
                return root, True
        except json.JSONDecodeError:
            pass
    if root.exists():
        shutil.rmtree(root)
    synthesize(root, test_count=0, **settings)
    atomic_write_json(marker, settings)  # written last: a half-made dataset is never reused
    return root, False


def _train(options: DemoOptions, root: Path, model: str = "simplenet") -> RunDir:
    from miniplaces.config import TrainConfig
    from miniplaces.workflows.train import train

    runs = options.out / "runs"
    if (runs / model).exists():
        shutil.rmtree(runs / model)  # the demo's own previous run
    config = TrainConfig(
        model=model, root=str(root), name=model, out_dir=str(runs), epochs=options.epochs,
        batch_size=options.batch_size, lr=options.lr, warmup_epochs=min(1.0, options.epochs / 2),
        device=options.device, workers=options.workers, loader=options.loader, image_size=options.image_size,
        seed=options.seed, limit_train_batches=options.limit_train_batches,
        limit_val_batches=options.limit_val_batches,
    )
    return RunDir(train(config))


def _mean_epoch_time(run: RunDir) -> float:
    rows = read_metrics(run.metrics)
    return sum(row.epoch_time_s for row in rows) / len(rows)


def run_demo(options: DemoOptions, on_phase: PhaseCallback | None = None) -> DemoResult:
    """Run the tour; `on_phase(phase, message, seconds)` is called when a phase starts (seconds None) and ends."""
    import torch

    if options.threads is None:
        return _run_demo(options, on_phase)
    previous = torch.get_num_threads()
    torch.set_num_threads(options.threads)
    try:
        return _run_demo(options, on_phase)
    finally:
        torch.set_num_threads(previous)


def _run_demo(options: DemoOptions, on_phase: PhaseCallback | None) -> DemoResult:
    import torch

    from miniplaces.report import build_report
    from miniplaces.workflows.analysis import attack_report, load_for_analysis, saliency_report
    from miniplaces.workflows.evaluate import evaluate_checkpoint

    def tell(phase: str, message: str, seconds: float | None = None) -> None:
        if on_phase is not None:
            on_phase(phase, message, seconds)

    if options.epochs < 1:
        raise MiniPlacesError(f"the demo trains for at least one epoch; got epochs = {options.epochs}")
    options = dataclasses.replace(options, out=Path(options.out))
    options.out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    torch.manual_seed(options.seed)

    start = time.perf_counter()
    if options.root is None:
        tell("data", f"synthetic dataset under {options.out / 'data'}")
        root, reused = synthetic_data(options)
        what = "reused" if reused else "made"
        summary = (f"{what} {options.classes} classes × {options.per_class} train / {options.val_per_class} val, "
                   f"{options.image_size}×{options.image_size}")
    else:
        root = Path(options.root)
        tell("data", f"dataset {root}")
        from miniplaces.data import read_categories, read_split

        summary = (f"{len(read_split(root, 'train'))} train / {len(read_split(root, 'val'))} val images, "
                   f"{len(read_categories(root))} classes")
    seconds["data"] = time.perf_counter() - start
    tell("data", summary, seconds["data"])

    start = time.perf_counter()
    tell("train", f"SimpleNet, {options.epochs} epochs at {options.image_size}×{options.image_size}, "
                  f"batch {options.batch_size}, device {options.device}")
    run = _train(options, root)
    seconds["train"] = time.perf_counter() - start
    last = read_metrics(run.metrics)[-1]
    tell("train", f"{run.path}: val top-1 {last.val_top1:.1f}%, top-5 {last.val_top5:.1f}% "
                  f"after epoch {last.epoch}", seconds["train"])

    runs = [run.path]
    if options.unfold:
        start = time.perf_counter()
        tell("unfold", "SimpleNet on UnfoldConv2d, same settings, to compare time and memory")
        unfold = _train(options, root, "simplenet_unfold")
        runs.append(unfold.path)
        seconds["unfold"] = time.perf_counter() - start
        times = [_mean_epoch_time(r) for r in (run, unfold)]
        tell("unfold", f"{unfold.path}: {times[1]:.1f} s per epoch against {times[0]:.1f} s native "
                       f"({times[1] / times[0]:.2f}×)", seconds["unfold"])

    checkpoint = run.best
    start = time.perf_counter()
    tell("eval", f"{checkpoint} on the val split")
    evaluation, eval_path = evaluate_checkpoint(checkpoint, root, split="val", device=options.device,
                                                workers=options.workers, batch_size=256)
    seconds["eval"] = time.perf_counter() - start
    tell("eval", f"top-1 {evaluation.top1:.1f}%, top-5 {evaluation.top5:.1f}% on {evaluation.count} "
                 f"images → {eval_path}", seconds["eval"])

    inputs = load_for_analysis(checkpoint, root, split="val", image_size=options.image_size, device="cpu")
    start = time.perf_counter()
    tell("saliency", f"vanilla gradient saliency of {options.saliency_images} val images")
    grid = saliency_report(inputs, method="vanilla", n=options.saliency_images, columns=8,
                           title="vanilla saliency · demo · val").path
    seconds["saliency"] = time.perf_counter() - start
    tell("saliency", str(grid), seconds["saliency"])

    start = time.perf_counter()
    # One attack per ε of the sweep; attack.json is the sweep's row at the spec's ε.
    spec = options.attack
    eps_list = sorted({*options.sweep, spec.eps})
    tell("attack", f"{spec.describe()} on {options.attack_images} val images "
                   f"at ε = {', '.join(f'{eps * 255:.3g}' for eps in eps_list)} (/255)")
    title = f"{spec.mode} {spec.attack.label}-{spec.steps} · demo · val"
    attack = attack_report(
        inputs, spec, limit=options.attack_images, batch_size=64, grid=8, sweep=eps_list, seed=options.seed,
        title=title, grid_title=f"{title}, ε = {spec.eps * 255:.3g}/255",
    ).result
    seconds["attack"] = time.perf_counter() - start
    tell("attack", f"top-1 clean {attack.clean_top1:.1f}% → {attack.adv_top1:.1f}% at ε = "
                   f"{spec.eps * 255:.3g}/255 → {run.attack.folder}", seconds["attack"])

    start = time.perf_counter()
    tell("report", f"{options.out / 'report'}")
    report = build_report(runs, options.out / "report", title="miniplaces demo")
    seconds["report"] = time.perf_counter() - start
    tell("report", str(report.html), seconds["report"])
    return DemoResult(root, run.path, report.out, report.html, evaluation, attack, report.table, seconds)
