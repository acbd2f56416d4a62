"""Pictures of saliency maps and attacks: heat-map overlays and captioned PNG grids (matplotlib, Agg).

Figures are made with `matplotlib.figure.Figure` directly, not pyplot, so nothing needs a display
and no global figure state is left behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from miniplaces.data.layout import short_category_name
from miniplaces.report.figures import fit_percent_axis


def robust_scale(maps: torch.Tensor, percentile: float = 99.0) -> torch.Tensor:
    """Divide each map by its `percentile`-th value and clip to [0, 1], so a few hot pixels do not wash out the rest.

    `maps` is (N, 1, H, W) or (N, H, W); all-zero maps stay zero.
    """
    flat = maps.detach().float().flatten(1)  # (N, H*W)
    scale = torch.quantile(flat, percentile / 100.0, dim=1)
    # A map whose percentile is zero (sparse maps) falls back to its maximum.
    scale = torch.where(scale > 0, scale, flat.amax(dim=1))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (maps.detach().float() / scale.view(-1, *([1] * (maps.dim() - 1)))).clamp(0, 1)


def to_hwc(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] → (H, W, 3) numpy, for imshow."""
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def overlay_heatmap(image: torch.Tensor, heat: torch.Tensor, *, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend a colour-mapped heat map over an image: (H, W, 3) floats in [0, 1].

    Args:
        image: (3, H, W) in [0, 1].
        heat: (1, H, W) or (H, W) in [0, 1] (scale it with `robust_scale` first).
        alpha: the weight of the heat map; the image keeps 1 − alpha.
    """
    coloured = colormaps[cmap](heat.detach().float().squeeze(0).clamp(0, 1).cpu().numpy())[..., :3]  # (H, W, 3)
    return (1 - alpha) * to_hwc(image) + alpha * coloured


def class_label(categories: Sequence[str], index: int) -> str:
    """A short class name for captions (`/a/abbey` → `abbey`), or the index when no names are known."""
    if 0 <= index < len(categories):
        return short_category_name(categories[index])
    return str(index)


def _save(figure: Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)
    return path


def _blank(axis: Any) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def saliency_grid(
    images: torch.Tensor,
    maps: torch.Tensor,
    true_names: Sequence[str],
    pred_names: Sequence[str],
    path: Path | str,
    *,
    title: str = "",
    columns: int = 8,
    percentile: float = 99.0,
    cmap: str = "jet",
) -> Path:
    """A PNG: for each image, the image above its heat-map overlay, the true and predicted class below."""
    n = len(images)
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    scaled = robust_scale(maps, percentile)
    figure = Figure(figsize=(1.9 * columns, 4.3 * rows + (0.4 if title else 0)))
    axes = figure.subplots(2 * rows, columns, squeeze=False)
    for i in range(rows * columns):
        top, bottom = axes[2 * (i // columns), i % columns], axes[2 * (i // columns) + 1, i % columns]
        if i >= n:
            top.set_axis_off()
            bottom.set_axis_off()
            continue
        top.imshow(to_hwc(images[i]))
        bottom.imshow(overlay_heatmap(images[i], scaled[i], cmap=cmap))
        _blank(top)
        _blank(bottom)
        bottom.set_xlabel(f"true: {true_names[i]}\npred: {pred_names[i]}", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def attack_grid(
    images: torch.Tensor,
    adversarial: torch.Tensor,
    true_names: Sequence[str],
    clean_names: Sequence[str],
    adv_names: Sequence[str],
    path: Path | str,
    *,
    title: str = "",
    target_names: Sequence[str] | None = None,
) -> Path:
    """A PNG with one column per image: original, adversarial image, perturbation amplified to fill the range.

    The perturbation is shown as 0.5 + δ / (2 max|δ|), so grey is no change.
    """
    n = len(images)
    delta = (adversarial - images).detach().float()
    amplitude = delta.abs().amax().clamp_min(1e-12)
    shown_delta = 0.5 + delta / (2 * amplitude)
    figure = Figure(figsize=(1.9 * n + 0.9, 7.2 + (0.4 if title else 0)))
    axes = figure.subplots(3, n, squeeze=False)
    for i in range(n):
        axes[0, i].imshow(to_hwc(images[i]))
        axes[0, i].set_xlabel(f"true: {true_names[i]}\npred: {clean_names[i]}", fontsize=8)
        axes[1, i].imshow(to_hwc(adversarial[i]))
        target = f"\ntarget: {target_names[i]}" if target_names is not None else ""
        axes[1, i].set_xlabel(f"pred: {adv_names[i]}{target}", fontsize=8)
        axes[2, i].imshow(to_hwc(shown_delta[i]))
        for row in range(3):
            _blank(axes[row, i])
    axes[0, 0].set_ylabel("original", fontsize=9)
    axes[1, 0].set_ylabel("adversarial", fontsize=9)
    axes[2, 0].set_ylabel(f"δ × {0.5 / float(amplitude):.0f}", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def run_label(checkpoint: Path | str) -> str:
    """How pictures name a checkpoint: its run's name (`runs/fast/checkpoints/best.pt` → `fast`, `last.pt` →
    `fast (last.pt)`, a run folder → its name); a file outside a run keeps its own name."""
    path = Path(checkpoint)
    if path.is_dir() or not path.suffix:
        return path.name
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        run = path.parent.parent.name
        return run if path.name == "best.pt" else f"{run} ({path.name})"
    return path.name


def sweep_plot(rows: Sequence[dict[str, Any]], path: Path | str, *, title: str = "") -> Path:
    """Robust top-1 and top-5 accuracy (percent) against ε (in 1/255 units) from `robustness_sweep` rows."""
    eps = [row["eps"] * 255 for row in rows]
    figure = Figure(figsize=(5.5, 3.8))
    axis = figure.subplots()
    axis.plot(eps, [row["adv_top1"] for row in rows], marker="o", label="top-1 under attack")
    axis.plot(eps, [row["adv_top5"] for row in rows], marker="s", label="top-5 under attack")
    axis.set_xlabel("ε (× 1/255, pixel units)")
    axis.set_ylabel("accuracy (%)")
    fit_percent_axis(axis, [row[key] for row in rows for key in ("adv_top1", "adv_top5")])
    axis.grid(alpha=0.3)
    axis.legend()
    if title:
        axis.set_title(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)
