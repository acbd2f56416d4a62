"""Saliency and attack reports of a trained model on a labelled split, as files in a folder.

What `miniplaces saliency`, `miniplaces attack` and `miniplaces demo` write:
`saliency_<method>.png`; `attack.json`, `attack_grid.png` and, with a sweep, `sweep.json` and
`sweep.png`. The command line decides where (by default beside the checkpoint's run, see
`miniplaces.engine.checkpoint.run_dir`) and prints what these functions return.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from miniplaces.attacks import DEFAULT_STEPS, attack_batch, evaluate_attack, robustness_sweep
from miniplaces.data import MiniPlaces
from miniplaces.engine.checkpoint import load_model
from miniplaces.engine.predict import checkpoint_image_size, eval_transform
from miniplaces.errors import MiniPlacesError
from miniplaces.explain import saliency
from miniplaces.explain.overlay import attack_grid, class_label, saliency_grid, sweep_plot


@dataclass(frozen=True)
class AnalysisInputs:
    """A checkpoint's model (eval mode), the checkpoint, a split with the eval transform, and the class names."""

    model: nn.Module
    checkpoint: dict[str, Any]
    dataset: MiniPlaces
    categories: list[str]
    image_size: int


def load_for_analysis(checkpoint: Path | str, root: Path | str, *, split: str = "val", image_size: int | None = None,
                      device: str | torch.device = "cpu") -> AnalysisInputs:
    """Load `checkpoint` on `device` and the labelled `split` of `root` at `image_size`.

    `image_size=None` takes the checkpoint's training image size (else 128). Raises
    `MiniPlacesError` when the split is empty or its classes do not match the model's outputs.
    """
    model, payload = load_model(checkpoint, device=device)
    if image_size is None:
        image_size = checkpoint_image_size(payload)
    dataset = MiniPlaces(root, split, transform=eval_transform(image_size))
    categories = list(payload.get("categories") or dataset.classes)
    outputs = int(getattr(model, "num_classes", len(categories) or 0))
    if dataset.classes and outputs and len(dataset.classes) != outputs:
        raise MiniPlacesError(
            f"checkpoint {checkpoint} predicts {outputs} classes but {root} has {len(dataset.classes)}; "
            "use the dataset the model was trained on"
        )
    if len(dataset) == 0:
        raise MiniPlacesError(f"the {split} split of {root} has no images")
    return AnalysisInputs(model, payload, dataset, categories, image_size)


def first_images(dataset: Dataset, n: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` images (or all, if fewer) of `dataset` as one batch `(x, y)` on `device`."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]  # type: ignore[arg-type]
    x = torch.stack([image for image, _ in items]).to(device)  # (N, 3, H, W)
    y = torch.tensor([label for _, label in items], device=device)
    return x, y


def _write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def _names(categories: Sequence[str], labels: torch.Tensor) -> list[str]:
    return [class_label(categories, int(k)) for k in labels]


@dataclass(frozen=True)
class SaliencyReport:
    """The grid written, and how many of its images the model classified right."""

    path: Path
    images: int
    correct: int
    labels: list[int]
    predicted: list[int]


def saliency_report(
    model: nn.Module,
    dataset: Dataset,
    categories: Sequence[str],
    out_dir: Path | str,
    *,
    method: str = "vanilla",
    n: int = 16,
    layer: str | None = None,
    samples: int = 16,
    sigma: float = 0.15,
    columns: int = 8,
    title: str = "",
) -> SaliencyReport:
    """Saliency maps (`miniplaces.explain.saliency`) of the first `n` images, drawn into
    `out_dir/saliency_<method>.png` with their true and predicted classes."""
    x, y = first_images(dataset, n, next(model.parameters()).device)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    maps = saliency(model, x, method=method, layer=layer, samples=samples, sigma=sigma)
    path = saliency_grid(x.cpu(), maps.cpu(), _names(categories, y), _names(categories, predicted),
                         Path(out_dir) / f"saliency_{method}.png", title=title, columns=columns)
    return SaliencyReport(path, len(x), int((predicted == y).sum()), y.tolist(), predicted.tolist())


def settings_line(result: dict[str, Any]) -> str:
    """The attack's settings in one line, e.g. `untargeted PGD, ε = 4/255, 10 steps of 0.4/255`."""
    if result["mode"] == "fgsm":
        return f"fgsm, ε = {result['eps_text']}"
    start = ", random start" if result["random_start"] else ""
    return (f"{result['mode']} PGD, ε = {result['eps_text']}, {result['steps']} steps of "
            f"{result['step_size'] * 255:.3g}/255{start}")


@dataclass(frozen=True)
class AttackReport:
    """The attack at ε (`evaluate_attack`'s dict), the sweep's rows (or None) and the files written."""

    result: dict[str, Any]
    rows: list[dict[str, Any]] | None
    attack_json: Path
    grid: Path
    sweep_json: Path | None = None
    sweep_plot: Path | None = None


def attack_report(
    model: nn.Module,
    dataset: Dataset,
    categories: Sequence[str],
    out_dir: Path | str,
    *,
    eps: float,
    mode: str = "least-likely",
    steps: int = DEFAULT_STEPS,
    step_size: float | None = None,
    random_start: bool = False,
    limit: int | None = None,
    batch_size: int = 32,
    grid: int = 8,
    sweep: Sequence[float] | None = None,
    context: dict[str, Any] | None = None,
    title: str = "",
    grid_title: str | None = None,
    seed: int | None = None,
) -> AttackReport:
    """Attack the first `limit` images (all by default) and write the reports into `out_dir`.

    Writes `attack.json` (the result at `eps` and `context`), `attack_grid.png` (the first `grid`
    images, titled `grid_title`, default the settings line) and, with `sweep`, `sweep.json`
    (`{"rows": [...], **context}`) and `sweep.png` (titled `title`).

    Args:
        seed: reseed torch before the sweep, so its random starts do not depend on what ran before.
    """
    out = Path(out_dir)
    context = context or {}
    device = next(model.parameters()).device
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    options = {"mode": mode, "steps": steps, "step_size": step_size, "random_start": random_start}
    rows = None
    if sweep is not None and eps in sweep and not random_start:
        # Without a random start the attack is deterministic: the sweep's row at ε is the attack at ε.
        rows = _sweep(model, loader, sweep, seed, device, options)
        result = rows[list(sweep).index(eps)]
    else:
        result = evaluate_attack(model, loader, eps=eps, device=device, **options)
    attack_json = _write_json(out / "attack.json", {**result, **context})

    x, y = first_images(dataset, grid, device)
    shown = attack_batch(model, x, y, eps=eps, **options)
    grid_path = attack_grid(
        x.cpu(), shown.x_adv.cpu(), _names(categories, y), _names(categories, shown.clean_logits.argmax(1)),
        _names(categories, shown.adv_logits.argmax(1)), out / "attack_grid.png",
        title=settings_line(result) if grid_title is None else grid_title,
        target_names=None if shown.target is None else _names(categories, shown.target),
    )
    if sweep is None:
        return AttackReport(result, None, attack_json, grid_path)
    if rows is None:
        rows = _sweep(model, loader, sweep, seed, device, options)
    sweep_json = _write_json(out / "sweep.json", {"rows": rows, **context})
    plot = sweep_plot(rows, out / "sweep.png", title=title)
    return AttackReport(result, rows, attack_json, grid_path, sweep_json, plot)


def _sweep(model: nn.Module, loader: DataLoader, eps_list: Sequence[float], seed: int | None,
           device: torch.device, options: dict[str, Any]) -> list[dict[str, Any]]:
    if seed is not None:
        torch.manual_seed(seed)
    return robustness_sweep(model, loader, eps_list=eps_list, device=device, **options)
