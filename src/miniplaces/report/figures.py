"""The report's figures as PNG files (matplotlib's object API: no pyplot, no global state, no display).

Each function takes runs and a path, writes one PNG and returns its path, or returns None
without writing when no run holds the data the figure needs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from miniplaces.fileio import atomic_write_bytes
from miniplaces.records import EvalResult
from miniplaces.report.runs import Run

DPI = 110


def _colors(count: int) -> list[str]:
    palette = [f"C{i}" for i in range(10)]
    return [palette[i % len(palette)] for i in range(count)]


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return atomic_write_bytes(path, buffer.getvalue())


def fit_percent_axis(axis: Axes, values: Sequence[float], margin: float = 0.1,
                     least: float = 5.0) -> tuple[float, float]:
    """Fit the y axis of percentages to `values`: their range widened by `margin` of it on each side (at least
    `least` points in all, so flat curves are not magnified into noise), kept within [0, 100]. Returns the limits."""
    low, high = (min(values), max(values)) if values else (0.0, 100.0)
    pad = max((high - low) * margin, (least - (high - low)) / 2, 0.0)
    low, high = max(0.0, low - pad), min(100.0, high + pad)
    axis.set_ylim(low, high)
    return low, high


def _has(runs: Sequence[Run], *keys: str) -> bool:
    return any(run.series(key)[0] for run in runs for key in keys)


# Each run gets a marker as well as a colour, drawn smaller for each later run, so that runs whose
# curves coincide (same seed and weights) still show every run's markers.
MARKERS = ("o", "s", "^", "D", "v", "P")
SPLIT_STYLES = (("train", "--"), ("val", "-"), ("val EMA", ":"))


def _marker(index: int) -> tuple[str, float]:
    return MARKERS[index % len(MARKERS)], max(2.5, 6.0 - 1.5 * index)


def curve_legend(runs: Sequence[Run], splits: Sequence[str]) -> list[Line2D]:
    """Legend entries: one per run (its colour and marker), then one per split drawn (its line style, grey)."""
    handles = [Line2D([], [], color=color, marker=_marker(index)[0], linestyle="-", label=run.name)
               for index, (run, color) in enumerate(zip(runs, _colors(len(runs)), strict=True))]
    handles += [Line2D([], [], color="0.35", linestyle=style, label=split)
                for split, style in SPLIT_STYLES if split in splits]
    return handles


def coinciding(runs: Sequence[Run], key: str) -> list[tuple[str, str]]:
    """Pairs of runs whose `key` series are equal to the eye (same epochs, values within 0.1%): one hides the other
    (e.g. native and unfold convolution from the same seed, whose losses differ by float rounding)."""
    pairs = []
    for index, first in enumerate(runs):
        xs, ys = first.series(key)
        for second in runs[index + 1:]:
            other_xs, other_ys = second.series(key)
            if xs and xs == other_xs and np.allclose(ys, other_ys, rtol=1e-3, atol=1e-9):
                pairs.append((first.name, second.name))
    return pairs


def curves_figure(runs: Sequence[Run], panels: Sequence[tuple[str, str, str]], ylabel: str) -> Figure | None:
    """One panel per (title, train key, val key); train dashed, val solid, the val of the weights' EMA
    dotted (runs that kept one), one colour and marker per run; one legend, right of the last panel, so it
    hides no curve; a note under a panel names the runs whose curves coincide."""
    if not _has(runs, *(key for _, train, val in panels for key in (train, val))):
        return None
    figure = Figure(figsize=(5.2 * len(panels) + 1.6, 4.1))
    drawn: set[str] = set()
    for index, (title, train_key, val_key) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for number, (run, color) in enumerate(zip(runs, _colors(len(runs)), strict=True)):
            marker, size = _marker(number)
            for key, style, split in ((train_key, "--", "train"), (val_key, "-", "val"),
                                      (f"{val_key}_ema", ":", "val EMA")):
                xs, ys = run.series(key)
                if xs:
                    drawn.add(split)
                    axes.plot(xs, ys, style, color=color, marker=marker, markersize=size,
                              label=f"{run.name} {split}")
        same = [pair for key in (train_key, val_key) for pair in coinciding(runs, key)]
        if same:
            names = sorted({f"{a} = {b}" for a, b in same})
            axes.text(0.0, -0.2, "curves coincide: " + "; ".join(names), transform=axes.transAxes,
                      fontsize=7, color="0.3", va="top")
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
    figure.axes[-1].legend(handles=curve_legend(runs, sorted(drawn)), fontsize=7, loc="upper left",
                           bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return figure


def _curves(runs: Sequence[Run], path: Path, panels: Sequence[tuple[str, str, str]], ylabel: str) -> Path | None:
    figure = curves_figure(runs, panels, ylabel)
    return None if figure is None else _save(figure, path)


ACCURACY_PANELS = (("Top-1 accuracy", "train_top1", "val_top1"), ("Top-5 accuracy", "train_top5", "val_top5"))


def accuracy_curves(runs: Sequence[Run], path: Path) -> Path | None:
    """Train (dashed), val (solid) and EMA val (dotted) top-1 and top-5 accuracy per epoch."""
    return _curves(runs, path, ACCURACY_PANELS, "accuracy (%)")


def loss_curves(runs: Sequence[Run], path: Path) -> Path | None:
    """Train (dashed), val (solid) and EMA val (dotted) loss per epoch."""
    return _curves(runs, path, [("Loss", "train_loss", "val_loss")], "cross-entropy loss")


def time_and_memory(runs: Sequence[Run], path: Path) -> Path | None:
    """Mean time per epoch and peak memory per run, side by side (e.g. native vs unfold convolution)."""
    if not _has(runs, "epoch_time_s", "peak_memory_mb"):
        return None
    names = [run.name for run in runs]
    colors = _colors(len(runs))
    figure = Figure(figsize=(max(8.0, 1.6 * len(runs) + 4), 3.8))
    for index, (key, title, unit, reduce) in enumerate(
        (("epoch_time_s", "Time per epoch (mean)", "seconds", "mean"), ("peak_memory_mb", "Peak memory", "MB", "max"))
    ):
        axes = figure.add_subplot(1, 2, index + 1)
        values = []
        for run in runs:
            ys = run.series(key)[1]
            values.append((sum(ys) / len(ys) if reduce == "mean" else max(ys)) if ys else 0.0)
        bars = axes.bar(range(len(runs)), values, color=colors)
        axes.bar_label(bars, labels=[f"{v:.1f}" if v else "—" for v in values], fontsize=8)
        axes.set_xticks(range(len(runs)), names, rotation=20, ha="right", fontsize=8)
        kinds = {row.peak_memory_kind for run in runs for row in run.epochs}
        axes.set_title(title + (f" ({', '.join(sorted(kinds))})" if key == "peak_memory_mb" and kinds else ""),
                       fontsize=10)
        axes.set_ylabel(unit)
        axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


def attack_accuracy(runs: Sequence[Run], path: Path) -> Path | None:
    """Top-1 under attack: accuracy against ε for runs with a sweep, clean vs attacked bars otherwise."""
    swept = [run for run in runs if run.sweep_points()]
    attacked = [(run, run.attack) for run in runs if run not in swept and run.attack is not None]
    if not swept and not attacked:
        return None
    panels = int(bool(swept)) + int(bool(attacked))
    figure = Figure(figsize=(5.2 * panels, 3.8))
    index = 1
    if swept:
        axes = figure.add_subplot(1, panels, index)
        index += 1
        for run, color in zip(swept, _colors(len(swept)), strict=True):
            points = run.sweep_points()
            axes.plot([p.eps * 255 for p in points], [p.top1 for p in points], "-o", color=color, label=run.name)
        fit_percent_axis(axes, [p.top1 for run in swept for p in run.sweep_points()])
        axes.set_title("Top-1 under attack")
        axes.set_xlabel("ε (×1/255, L∞)")
        axes.set_ylabel("top-1 accuracy (%)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    if attacked:
        axes = figure.add_subplot(1, panels, index)
        width = 0.38
        xs = range(len(attacked))
        clean = [a.clean_top1 for _, a in attacked]
        adv = [a.adv_top1 for _, a in attacked]
        axes.bar([x - width / 2 for x in xs], clean, width, label="clean", color="C0")
        axes.bar([x + width / 2 for x in xs], adv, width, label="attacked", color="C3")
        labels = []
        for run, a in attacked:
            labels.append(f"{run.name}\nε={a.eps * 255:.3g}/255")
        axes.set_xticks(list(xs), labels, fontsize=8)
        axes.set_title("Top-1 clean vs attacked")
        axes.set_ylabel("top-1 accuracy (%)")
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize=8)
    return _save(figure, path)


# Up to this many classes the axes name every class; beyond it they show every tenth index.
LABELLED_CLASSES = 20


def confusion_matrix(result: EvalResult, title: str, path: Path) -> Path:
    """Write `confusion_figure(result, title)` to `path`."""
    return _save(confusion_figure(result, title), path)


def confusion_figure(result: EvalResult, title: str) -> Figure:
    """The eval's confusion matrix as an image: rows true class, columns predicted, in class-index order.

    Each row is normalised to the percentage of its true class's images (so classes with fewer images
    are not paler), drawn on a square-root colour scale with its colour bar. Up to `LABELLED_CLASSES`
    classes the ticks carry the class names; above it, every tenth class index. No numbers in the
    cells: they would not be legible at 100 classes.
    """
    counts = np.asarray(result.confusion, dtype=np.float64)  # (true, predicted)
    totals = counts.sum(axis=1, keepdims=True)
    percent = np.divide(100.0 * counts, totals, out=np.zeros_like(counts), where=totals > 0)
    classes = len(percent)
    labelled = classes <= LABELLED_CLASSES
    side = 5.0 if labelled and classes <= 10 else 6.5
    figure = Figure(figsize=(side + 1.6, side))
    axes = figure.add_subplot(1, 1, 1)
    # A square-root scale, so the confusions of a few percent that matter among 100 classes stay visible.
    image = axes.imshow(percent, cmap="viridis", norm=PowerNorm(0.5, vmin=0, vmax=100), interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label("% of the true class")
    if labelled:
        names = [c.name.rsplit("/", 1)[-1] for c in result.per_class] or [str(i) for i in range(classes)]
        axes.set_xticks(range(classes), names, rotation=90, fontsize=7)
        axes.set_yticks(range(classes), names, fontsize=7)
    else:
        ticks = list(range(0, classes, 10))
        axes.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
        axes.set_yticks(ticks, [str(t) for t in ticks], fontsize=7)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"{title}: top-1 {result.top1:.1f}% on {result.count} {result.split} images", fontsize=10)
    return figure
