"""The results table of the study: one row per run, as Markdown and CSV.

The main table is narrow (`MAIN_COLUMNS`: run, model, epochs, the best val top-1/top-5, which weights
scored them, accuracy under attack when a run was attacked); the details table holds every column.
Per run: model, epochs, train and val top-1/top-5 at the final epoch, val top-1/top-5 at the best epoch
(of the weights `best.pt` holds: the EMA's when the run kept one, as training chose it; the raw model's
best then has its own column), the minimum train loss, the mean time per epoch, the peak memory,
`miniplaces eval`'s val top-1 and its test-time augmentation when the run has been evaluated, and
accuracy under attack when the run has been attacked (columns no run has are left out of the Markdown
and HTML). A value the run lacks is `None`; Markdown and HTML show it as "—", CSV as an empty cell.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miniplaces.fileio import atomic_write_text
from miniplaces.records import EvalResult
from miniplaces.report.runs import Run, number

MISSING = "—"
MEMORY_KINDS = {"cuda_max_allocated": "CUDA max allocated", "cpu_max_rss": "CPU peak RSS"}


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str  # format spec for numbers, "" for text


COLUMNS: tuple[Column, ...] = (
    Column("run", "Run", ""),
    Column("model", "Model", ""),
    Column("epochs", "Epochs", ""),
    Column("train_top1", "Last train top-1 %", ".2f"),
    Column("train_top5", "Last train top-5 %", ".2f"),
    Column("val_top1", "Last val top-1 % (raw)", ".2f"),
    Column("val_top5", "Last val top-5 % (raw)", ".2f"),
    Column("best_val_top1", "Best val top-1 %", ".2f"),
    Column("best_val_top5", "Best val top-5 %", ".2f"),
    Column("weights", "Weights", ""),
    Column("best_epoch", "Best epoch", "d"),
    Column("best_val_top1_raw", "Best raw val top-1 %", ".2f"),
    Column("min_train_loss", "Min train loss", ".4f"),
    Column("epoch_time_s", "Time per epoch s", ".1f"),
    Column("images_per_s", "Images/s", ".0f"),
    Column("peak_memory_mb", "Peak memory MB", ".0f"),
    Column("memory_kind", "Memory measured", ""),
    Column("eval_top1", "Eval top-1 %", ".2f"),
    Column("eval_tta", "Eval TTA", ""),
    Column("clean_top1", "Clean top-1 %", ".2f"),
    Column("adv_top1", "Attacked top-1 %", ".2f"),
    Column("attack", "Attack", ""),
)

# The main table: what a reader compares runs by. Every other column is in the details table.
MAIN_COLUMNS: tuple[str, ...] = ("run", "model", "epochs", "best_val_top1", "best_val_top5", "weights", "adv_top1")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(run: Run) -> dict[str, Any]:
    """One row of the results table (raw numbers; None where the run lacks the metric)."""
    last = run.epochs[-1]
    done = last.epoch
    planned = number(run.config.get("epochs"))
    epochs = f"{done} of {int(planned)}" if planned is not None and planned > done else str(done)

    # The best epoch as training chose it for best.pt: by the EMA's val top-1 when the run keeps one, and
    # never an epoch whose val loss is not finite.
    ema = run.keeps_ema
    best_epoch = best_top1 = best_top5 = best_raw = None
    for row in run.epochs:
        top1, top5, loss = ((row.val_top1_ema, row.val_top5_ema, row.val_loss_ema) if ema
                            else (row.val_top1, row.val_top5, row.val_loss))
        top1 = number(top1)
        if top1 is not None and number(loss) is not None and (best_top1 is None or top1 > best_top1):
            best_top1, best_top5, best_epoch = top1, number(top5), row.epoch
        raw = number(row.val_top1)
        if ema and raw is not None and (best_raw is None or raw > best_raw):
            best_raw = raw

    evaluated = run.evals.get("val")
    losses = run.series("train_loss")[1]
    memory = run.series("peak_memory_mb")[1]
    kinds = sorted({row.peak_memory_kind for row in run.epochs})
    attack = run.attack
    attack_label = None
    if attack is not None:
        attack_label = " ".join(part for part in (attack.mode, f"ε={attack.eps * 255:.3g}/255") if part)
    return {
        "run": run.name,
        "model": run.model,
        "epochs": epochs,
        "train_top1": number(last.train_top1),
        "train_top5": number(last.train_top5),
        "val_top1": number(last.val_top1),
        "val_top5": number(last.val_top5),
        "best_val_top1": best_top1,
        "best_val_top5": best_top5,
        "weights": "EMA" if ema else "raw",
        "best_epoch": best_epoch,
        "best_val_top1_raw": best_raw,
        "min_train_loss": min(losses) if losses else None,
        "epoch_time_s": _mean(run.series("epoch_time_s")[1]),
        "images_per_s": _mean(run.series("images_per_s")[1]),
        "peak_memory_mb": max(memory) if memory else None,
        "memory_kind": ", ".join(MEMORY_KINDS.get(k, k) for k in kinds) or None,
        "eval_top1": evaluated.top1 if evaluated else None,
        "eval_tta": (evaluated.tta or "none") if evaluated else None,
        "clean_top1": attack.clean_top1 if attack else None,
        "adv_top1": attack.adv_top1 if attack else None,
        "attack": attack_label,
    }


def results_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    return [summarize(run) for run in runs]


def format_cell(value: Any, column: Column) -> str:
    if value is None:
        return MISSING
    if column.fmt and isinstance(value, int | float):
        return format(value, column.fmt)
    return str(value)


def visible_columns(rows: Sequence[dict[str, Any]], details: bool = True) -> list[Column]:
    """The details table's columns (all, less the attack, raw-best and eval columns when no run has them),
    or with `details=False` those of them in `MAIN_COLUMNS`."""
    attacked = any(row["attack"] or row["adv_top1"] is not None for row in rows)
    hidden = set() if attacked else {"clean_top1", "adv_top1", "attack"}
    for keys in (("best_val_top1_raw",), ("eval_top1", "eval_tta")):
        if all(row[keys[0]] is None for row in rows):
            hidden.update(keys)
    return [c for c in COLUMNS if c.key not in hidden and (details or c.key in MAIN_COLUMNS)]


def to_markdown(rows: Sequence[dict[str, Any]], details: bool = False) -> str:
    """The main table, or with `details` every column a run has (see `visible_columns`)."""
    columns = visible_columns(rows, details)
    lines = [
        "| " + " | ".join(c.header for c in columns) + " |",
        "|" + "|".join("---" if not c.fmt else "---:" for c in columns) + "|",
    ]
    for row in rows:
        cells = (format_cell(row[c.key], c).replace("|", "\\|") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Every column, full precision; a missing value is an empty cell. Written atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow([c.key for c in COLUMNS])
    for row in rows:
        writer.writerow(["" if row[c.key] is None else row[c.key] for c in COLUMNS])
    return atomic_write_text(path, buffer.getvalue())


# ---------------------------------------------------------------- what each run was trained on, and how

SETTING_COLUMNS: tuple[Column, ...] = (
    Column("run", "Run", ""),
    Column("dataset", "Dataset", ""),
    Column("classes", "Classes", "d"),
    Column("eval_images", "Eval images", ""),
    Column("image_size", "Image size", ""),
    Column("model", "Model", ""),
    Column("epochs", "Epochs planned", "g"),
    Column("batch_size", "Batch", "g"),
    Column("optimizer", "Optimizer", ""),
    Column("lr", "LR", "g"),
    Column("weight_decay", "Weight decay", "g"),
    Column("warmup_epochs", "Warm-up epochs", "g"),
    Column("label_smoothing", "Label smoothing", "g"),
    Column("loader", "Loader", ""),
    Column("amp", "AMP", ""),
    Column("other", "Other", ""),
)


def _short_root(root: Any) -> str | None:
    """The dataset folder's last two parts (`shared/miniplaces`, `demo/data`): enough to tell runs apart."""
    if not root:
        return None
    parts = Path(str(root)).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else str(root)


def _other_settings(config: dict[str, Any]) -> str | None:
    """The settings that change training but are usually left alone, only where they are set."""
    parts = []
    if config.get("optimizer") == "sgd" and config.get("momentum") is not None:
        parts.append(f"momentum {config['momentum']:g}")
    if number(config.get("min_lr")):
        parts.append(f"min lr {config['min_lr']:g}")
    if config.get("clip_grad") is not None:
        parts.append(f"clip grad {config['clip_grad']}")
    for key, label in (("no_wd_norm_bias", "no wd on norm/bias"), ("channels_last", "channels-last"),
                       ("compile", "compiled"), ("sync_bn", "sync BN")):
        if config.get(key):
            parts.append(label)
    if config.get("tta"):
        parts.append(f"val TTA {config['tta']}")
    if config.get("adv_train") not in (None, "none"):
        parts.append(f"adversarial training {config['adv_train']} {config.get('adv_mode', '')} "
                     f"ε={config.get('adv_eps')} × {config.get('adv_steps')} steps")
    for key, label in (("limit_train_batches", "train batches ≤"), ("limit_val_batches", "val batches ≤")):
        if config.get(key) is not None:
            parts.append(f"{label} {config[key]}")
    if "seed" in config:
        parts.append(f"seed {config['seed']}")
    return ", ".join(parts) or None


def settings_row(run: Run) -> dict[str, Any]:
    """One run's dataset, image size and hyper-parameters, from its resolved `config.yaml` (None: not recorded).

    The image counts are those of its eval JSON files (`split: count`); training does not record them.
    """
    config = run.config
    model = run.model
    kwargs = config.get("model_kwargs")
    if model and isinstance(kwargs, dict) and kwargs:
        model += " (" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
    size = config.get("image_size")
    loader = config.get("loader")
    if loader and config.get("workers") is not None:
        loader = f"{loader}, {config['workers']} workers"
    classes = {len(result.per_class) for result in run.evals.values()}
    return {
        "run": run.name,
        "dataset": _short_root(config.get("root")),
        "classes": classes.pop() if len(classes) == 1 else None,
        "eval_images": ", ".join(f"{split} {result.count}" for split, result in run.evals.items()) or None,
        "image_size": f"{size}×{size}" if size else None,
        "model": model,
        "epochs": config.get("epochs"),
        "batch_size": config.get("batch_size"),
        "optimizer": config.get("optimizer"),
        "lr": number(config.get("lr")),
        "weight_decay": number(config.get("weight_decay")),
        "warmup_epochs": number(config.get("warmup_epochs")),
        "label_smoothing": number(config.get("label_smoothing")),
        "loader": loader,
        "amp": config.get("amp"),
        "other": _other_settings(config),
    }


def settings_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    return [settings_row(run) for run in runs]


# ---------------------------------------------------------------- what an eval's confusion matrix says, in words


@dataclass(frozen=True)
class ConfusedPair:
    """Images of class `true` predicted as `predicted`: `count` of them, `percent` of the true class's images."""

    true: str
    predicted: str
    count: int
    percent: float


def _class_names(result: EvalResult) -> list[str]:
    names = [c.name.rsplit("/", 1)[-1] for c in result.per_class]
    return names if len(names) == len(result.confusion) else [str(i) for i in range(len(result.confusion))]


def confused_pairs(result: EvalResult, top: int = 10) -> list[ConfusedPair]:
    """The `top` largest off-diagonal cells of the confusion matrix, most images first (ties: class order)."""
    names = _class_names(result)
    cells = []
    for i, row in enumerate(result.confusion):
        total = sum(row)
        cells.extend(ConfusedPair(names[i], names[j], count, 100.0 * count / total)
                     for j, count in enumerate(row) if j != i and count > 0)
    return sorted(cells, key=lambda pair: -pair.count)[:top]


def per_class_accuracy(result: EvalResult) -> list[tuple[str, float, int]]:
    """(class, top-1 %, images) for every class with images, worst first (ties: class order)."""
    names = _class_names(result)
    rows = []
    for i, row in enumerate(result.confusion):
        total = sum(row)
        if total:
            rows.append((names[i], 100.0 * row[i] / total, total))
    return sorted(rows, key=lambda item: item[1])
