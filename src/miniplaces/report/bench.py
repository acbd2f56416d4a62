"""Tables and figures of the benchmarks' rows (`miniplaces.bench.conv`, `miniplaces.bench.data`).

The measuring lives in `miniplaces.bench`; this module only shows what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

CONV_VARIANTS = ("native", "cache", "recompute")
SUMMARY_LAYERS = ("total", "simplenet")


def conv_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per layer, native time and saved memory, and unfold (cache, recompute) as ratios to native."""
    lines = [
        "| Layer | Shape | Native ms | Cache × | Recompute × | Native saved MB | Cache × | Recompute × |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['shape']} | {r['native_ms']:.1f} | {r['cache_time_ratio']:.2f} | "
            f"{r['recompute_time_ratio']:.2f} | {r['native_saved_mb']:.1f} | {r['cache_memory_ratio']:.2f} | "
            f"{r['recompute_memory_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def conv_figure(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Forward+backward time and memory saved for backward per layer, native vs unfold (cache, recompute)."""
    layers = [r for r in rows if r["layer"] not in SUMMARY_LAYERS]
    total = next((r for r in rows if r["layer"] == "total"), None)
    figure = Figure(figsize=(12, 4.2))
    width = 0.27
    for index, (suffix, title, unit, ratio) in enumerate(
        (("_ms", "Forward + backward time", "ms (median)", "_time_ratio"),
         ("_saved_mb", "Memory saved for backward", "MB", "_memory_ratio"))
    ):
        axes = figure.add_subplot(1, 2, index + 1)
        for offset, variant in enumerate(CONV_VARIANTS):
            xs = [i + (offset - 1) * width for i in range(len(layers))]
            axes.bar(xs, [r[f"{variant}{suffix}"] for r in layers], width, label=variant, color=f"C{offset}")
        axes.set_xticks(range(len(layers)), [r["layer"] for r in layers], rotation=25, ha="right", fontsize=8)
        if total is not None:
            title += f"\ntotal: cache {total['cache' + ratio]:.2f}×, recompute {total['recompute' + ratio]:.2f}× native"
        axes.set_title(title, fontsize=10)
        axes.set_ylabel(unit)
        axes.grid(axis="y", alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def data_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: images/s of each loader and its ratio to the per-sample DataLoader (the first row)."""
    lines = ["| Loader | Device | Images/s | × per-sample | Images timed | Seconds |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['loader']} | {r['device']} | {r['images_per_s']:.0f} | {r['ratio']:.2f} | "
                     f"{r['images']} | {r['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def data_figure(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Images per second of each loader, horizontal bars labelled with the ratio to the per-sample loader."""
    figure = Figure(figsize=(9, 0.6 * len(rows) + 1.6))
    axes = figure.add_subplot(1, 1, 1)
    labels = [f"{r['loader']} [{r['device']}]" for r in rows]
    ys = list(range(len(rows)))[::-1]
    bars = axes.barh(ys, [r["images_per_s"] for r in rows], color=[f"C{i}" for i in range(len(rows))])
    axes.bar_label(bars, labels=[f"{r['images_per_s']:.0f}/s ({r['ratio']:.1f}×)" for r in rows], fontsize=8,
                   padding=3)
    axes.set_yticks(ys, labels, fontsize=8)
    axes.set_xlabel("images per second")
    axes.set_xlim(0, max(r["images_per_s"] for r in rows) * 1.25)
    axes.set_title(f"Data throughput on {rows[0].get('data', '')}", fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path
