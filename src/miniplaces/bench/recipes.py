"""Recipes side by side: the study's SimpleNet recipe (`configs/simplenet.yaml`, the baseline) and the fast
recipe (`configs/fast.yaml`), trained one after the other on the same data, at the same image size, for the
same number of epochs (so the same training images seen), each by `miniplaces.workflows.train.train` in its
own temporary run folder.

Per recipe: seconds per training image (the training loop's own time, loading included, validation not),
its ratio to the baseline's, val top-1/top-5 of the last epoch and of the best epoch (of the EMA when the
recipe keeps one: those are the weights its run checkpoints), the ratio of top-1 to the baseline's, and
per epoch its training side, images/s and top-1 (in the JSON).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from miniplaces.bench.data import find_real_root
from miniplaces.bench.result import BenchResult
from miniplaces.config import TrainConfig, load_config, resolve_progressive
from miniplaces.data.batch_augment import PROGRESSIVE_STEP
from miniplaces.errors import MiniPlacesError
from miniplaces.presets import presets_dir
from miniplaces.records import read_metrics
from miniplaces.rundir import RunDir

CONFIGS = presets_dir()
# (label, config file, precision); the first is the baseline. Each is pinned to one precision, whatever the
# presets' `amp: auto` would pick on this machine, so that the rows say what they measured.
RECIPES = (("simplenet (study)", "simplenet.yaml", "float32"), ("fast", "fast.yaml", "float32"),
           ("fast", "fast.yaml", "bf16"))
AMP = {"float32": "none", "bf16": "bf16"}


def recipe_config(path: Path | str, *, root: Path | str, image_size: int, epochs: int, out_dir: Path | str,
                  name: str, device: torch.device, limit_train_batches: int | None = None,
                  limit_val_batches: int | None = None, batch_size: int | None = None,
                  limit_batch_size: int | None = None) -> TrainConfig:
    """The recipe in `path` with the benchmark's data, size and budget.

    A progressive-resizing start side keeps its ratio to the file's `image_size` (96 of 128 → 48 of 64),
    rounded down to a multiple of `PROGRESSIVE_STEP` (8 px) and at least 16; its start and end epochs keep their
    fraction of the file's `epochs` (an end one epoch past a 10-epoch run stays one tenth past a run of any length).
    The batch limits count batches of `limit_batch_size` (the baseline's) when given: a recipe with another
    batch size gets as many training images at most (whole batches) and at least as many validation images,
    so both recipes see the same images.
    """
    path = Path(path)
    if not path.is_file():
        raise MiniPlacesError(f"recipe file {path} does not exist; the recipes benchmark reads the packaged "
                              f"presets in {presets_dir()}")
    config = load_config(path)
    start = config.progressive_start_size
    start_epoch, end_epoch = config.progressive_start_epoch, config.progressive_end_epoch
    # Fractions (floats) scale themselves when the config is resolved; counts are scaled here.
    if isinstance(start, int):
        scaled = int(start * image_size / config.image_size) // PROGRESSIVE_STEP * PROGRESSIVE_STEP
        start = min(image_size, max(16, scaled))
    if isinstance(start_epoch, int):
        start_epoch = round(start_epoch * epochs / config.epochs)
    if isinstance(end_epoch, int):
        end_epoch = max(start_epoch, round(end_epoch * epochs / config.epochs))
    batch = batch_size or config.batch_size
    if limit_batch_size is not None and limit_batch_size != batch:
        if limit_train_batches is not None:
            limit_train_batches = max(1, limit_train_batches * limit_batch_size // batch)
        if limit_val_batches is not None:
            limit_val_batches = -(-limit_val_batches * limit_batch_size // batch)  # rounded up
    return resolve_progressive(dataclasses.replace(
        config, root=str(root), image_size=image_size, epochs=epochs, out_dir=str(out_dir), name=name,
        device=str(device), progressive_start_size=start, progressive_start_epoch=start_epoch,
        progressive_end_epoch=end_epoch, limit_train_batches=limit_train_batches,
        limit_val_batches=limit_val_batches, batch_size=batch,
        # The cache loader makes its batches in this process; workers would only compete for the cores.
        workers=0,
    ))


def _row(label: str, config: TrainConfig, run: RunDir, wall_s: float) -> dict[str, Any]:
    from miniplaces.workflows.train import train_size

    rows = read_metrics(run.metrics)
    if not rows:
        raise MiniPlacesError(f"the {label} run in {run.path} wrote no epoch")
    ema = config.ema
    top1 = [r.val_top1_ema if ema else r.val_top1 for r in rows]
    top5 = [r.val_top5_ema if ema else r.val_top5 for r in rows]
    best = max(range(len(rows)), key=lambda i: top1[i])  # type: ignore[arg-type]
    # Every epoch sees the same number of images, so the mean of seconds per image is the run's.
    seconds_per_image = sum(1.0 / r.images_per_s for r in rows) / len(rows)
    return {
        "recipe": label + (" (EMA)" if ema else ""), "epochs": len(rows),
        "sides": sorted({train_size(config, epoch) for epoch in range(len(rows))}),
        "seconds_per_image": seconds_per_image, "top1": top1[-1], "top5": top5[-1],
        "best_top1": top1[best], "best_top5": top5[best], "raw_top1": rows[-1].val_top1, "wall_s": wall_s,
        "per_epoch": [{"epoch": r.epoch, "side": train_size(config, r.epoch - 1), "images_per_s": r.images_per_s,
                       "top1": t} for r, t in zip(rows, top1, strict=True)],
    }


def compare_recipes(*, root: Path | str, device: torch.device, image_size: int = 64, epochs: int = 10,
                    limit_train_batches: int | None = None, limit_val_batches: int | None = None,
                    batch_size: int | None = None, configs: Path = CONFIGS, bf16: bool = True) -> list[dict[str, Any]]:
    """Train each of `RECIPES` in turn (the baseline first; the bf16 rows only with `bf16`) and return one row per
    recipe, ratios included."""
    from miniplaces.workflows.train import train

    rows = []
    limit_batch_size: int | None = None  # the baseline's batch: the unit of the limits for every recipe
    with tempfile.TemporaryDirectory(prefix="miniplaces-recipes-") as tmp:
        for index, (label, filename, precision) in enumerate(RECIPES):
            if precision == "bf16" and not bf16:
                continue
            config = recipe_config(configs / filename, root=root, image_size=image_size, epochs=epochs,
                                   out_dir=tmp, name=f"recipe{index}", device=device,
                                   limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
                                   batch_size=batch_size, limit_batch_size=limit_batch_size)
            config = dataclasses.replace(config, amp=AMP[precision])
            limit_batch_size = limit_batch_size or config.batch_size
            t0 = time.perf_counter()
            run = RunDir(train(config, progress=False))
            rows.append(_row(f"{label} {precision}", config, run, time.perf_counter() - t0))
    base = rows[0]
    for row in rows:
        row["time_ratio"] = row["seconds_per_image"] / base["seconds_per_image"]
        # A baseline at 0 % (a tiny smoke run) leaves nothing to divide by.
        row["top1_ratio"] = row["top1"] / base["top1"] if base["top1"] > 0 else None
    return rows


def run(*, device: torch.device, root: Path | None = None, synthetic: bool = False, image_size: int = 64,
        epochs: int = 10, limit_train_batches: int | None = None, limit_val_batches: int | None = None,
        batch_size: int | None = None, bf16: bool = True) -> BenchResult:
    """`compare_recipes` on `root` (default: the shared subset when found, else a synthetic set) as a `BenchResult`."""
    from miniplaces.data.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="miniplaces-recipes-data-") as tmp:
        if root is None and not synthetic:
            root = find_real_root()
        if root is None:
            root = synthesize(Path(tmp) / "synth", classes=4, per_class=16, val_per_class=4, image_size=image_size)
            data = f"synthetic (4 classes × 16, {image_size}×{image_size})"
        else:
            data = str(root)
        rows = compare_recipes(root=root, device=device, image_size=image_size, epochs=epochs,
                               limit_train_batches=limit_train_batches, limit_val_batches=limit_val_batches,
                               batch_size=batch_size, bf16=bf16)
    settings: dict[str, Any] = {"device": device, "root": data, "image_size": image_size, "epochs": epochs,
                                "limit_train_batches": limit_train_batches, "limit_val_batches": limit_val_batches,
                                "batch_size": batch_size, "synthetic": synthetic, "bf16": bf16}
    return BenchResult("recipes", settings, "the study's SimpleNet recipe (configs/simplenet.yaml) in float32, "
                       "trained in the same run on the same data, size and epochs", rows)


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(result: BenchResult) -> str:
    """Markdown: per recipe, time per training image and val accuracy, each with its ratio to the baseline."""
    lines = ["| Recipe | Epochs | Train sides | ms / train image | Time ratio | Top-1 (last) | Top-5 (last) | "
             "Best top-1 | Best top-5 | Top-1 ratio | Raw top-1 (last) | Wall s |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result.rows:
        side = "/".join(str(s) for s in r["sides"])
        lines.append(f"| {r['recipe']} | {r['epochs']} | {side} | {1000 * r['seconds_per_image']:.3f} | "
                     f"{r['time_ratio']:.3f} | {r['top1']:.2f} | {r['top5']:.2f} | {r['best_top1']:.2f} | "
                     f"{r['best_top5']:.2f} | {_number(r['top1_ratio'], '.2f')} | {r['raw_top1']:.2f} | "
                     f"{r['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"
