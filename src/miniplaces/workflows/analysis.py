"""Saliency and attack reports of a trained model on a labelled split, as files in a folder.

What `miniplaces saliency`, `miniplaces attack` and `miniplaces demo` write: by default into
the checkpoint's run (`RunDir.saliency`, `RunDir.attack`), `saliency_<method>.png`; an
`AttackResult` in `attack.json` with `attack_grid.png` and, with a sweep, a `Sweep` in
`sweep.json` with `sweep.png`. The caller prints what these functions return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from miniplaces.attacks.evaluate import attack_batch, evaluate_attack, robustness_sweep
from miniplaces.attacks.spec import AttackSpec
from miniplaces.data import MiniPlaces
from miniplaces.engine.checkpoint import checkpoint_image_size
from miniplaces.engine.predict import eval_transform
from miniplaces.errors import MiniPlacesError
from miniplaces.explain import saliency
from miniplaces.explain.overlay import attack_grid, class_label, saliency_grid, sweep_plot
from miniplaces.models.io import load_model_any, resolve_model_path
from miniplaces.progress import StartProgress, no_progress
from miniplaces.records import AttackResult, AttackSource, Sweep
from miniplaces.rundir import AttackFiles, RunDir, saliency_png


@dataclass(frozen=True)
class AnalysisInputs:
    """A checkpoint's model (eval mode) and payload, a split of `root` with the eval transform, the class names,
    and where they came from."""

    model: nn.Module
    checkpoint: dict[str, Any]
    dataset: MiniPlaces
    categories: list[str]
    image_size: int
    checkpoint_path: Path
    root: Path
    split: str

    @property
    def run(self) -> RunDir:
        """The run the checkpoint belongs to (where reports go by default); an export folder stands for itself."""
        if self.checkpoint_path.is_dir():
            return RunDir(self.checkpoint_path)
        return RunDir.of_checkpoint(self.checkpoint_path)


def load_for_analysis(checkpoint: Path | str, root: Path | str, *, split: str = "val", image_size: int | None = None,
                      device: str | torch.device = "cpu") -> AnalysisInputs:
    """Load `checkpoint` (a checkpoint file, a run folder or an export folder: see `miniplaces.models.io`) on
    `device` and the labelled `split` of `root` at `image_size`.

    `image_size=None` takes the checkpoint's training image size (else 128). Raises
    `MiniPlacesError` when the split is empty or its classes do not match the model's outputs.
    """
    checkpoint = resolve_model_path(checkpoint)
    model, payload = load_model_any(checkpoint, device=device)
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
    saved = list(payload.get("categories") or [])
    if saved and dataset.classes and list(dataset.classes) != saved:
        raise MiniPlacesError(
            f"{root} has categories that differ from the {len(saved)} checkpoint {checkpoint} was trained on "
            f"(first difference: {_first_difference(saved, list(dataset.classes))}); "
            "use the dataset the model was trained on"
        )
    if len(dataset) == 0:
        raise MiniPlacesError(f"the {split} split of {root} has no images")
    return AnalysisInputs(model, payload, dataset, categories, image_size, Path(checkpoint), Path(root), split)


def _first_difference(saved: list[str], found: list[str]) -> str:
    for index, (a, b) in enumerate(zip(saved, found, strict=False)):
        if a != b:
            return f"class {index} is {b!r}, the checkpoint's is {a!r}"
    return f"{len(found)} classes, the checkpoint has {len(saved)}"


def first_images(dataset: Dataset, n: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` images (or all, if fewer) of `dataset` as one batch `(x, y)` on `device`."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]  # type: ignore[arg-type]
    x = torch.stack([image for image, _ in items]).to(device)  # (N, 3, H, W)
    y = torch.tensor([label for _, label in items], device=device)
    return x, y


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
    inputs: AnalysisInputs,
    out_dir: Path | str | None = None,
    *,
    method: str = "vanilla",
    n: int = 16,
    layer: str | None = None,
    samples: int = 16,
    sigma: float = 0.15,
    columns: int = 8,
    title: str = "",
    batch_size: int = 16,
    progress: StartProgress | None = None,
) -> SaliencyReport:
    """Saliency maps (`miniplaces.explain.saliency`) of the first `n` images, drawn into
    `out_dir/saliency_<method>.png` (default: the run's `saliency/`) with their true and predicted classes.

    The maps are computed `batch_size` images at a time; `progress` opens one task, "saliency", advanced
    after each batch.
    """
    model, categories = inputs.model, inputs.categories
    x, y = first_images(inputs.dataset, n, next(model.parameters()).device)
    predicted_parts, map_parts = [], []
    with (progress or no_progress)("saliency", len(x)) as advance:
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            with torch.no_grad():
                predicted_parts.append(model(batch).argmax(1))
            map_parts.append(saliency(model, batch, method=method, layer=layer, samples=samples, sigma=sigma))
            advance(len(batch))
    predicted, maps = torch.cat(predicted_parts), torch.cat(map_parts)
    folder = inputs.run.saliency if out_dir is None else Path(out_dir)
    path = saliency_grid(x.cpu(), maps.cpu(), _names(categories, y), _names(categories, predicted),
                         saliency_png(folder, method), title=title, columns=columns)
    return SaliencyReport(path, len(x), int((predicted == y).sum()), y.tolist(), predicted.tolist())


def settings_line(settings: dict[str, Any]) -> str:
    """An attack's settings in one line, e.g. `untargeted PGD, ε = 4/255, 10 steps of 0.4/255`."""
    return AttackSpec.from_dict(settings).describe()


@dataclass(frozen=True)
class AttackReport:
    """The attack at ε, the sweep (or None), and the folder's files."""

    result: AttackResult
    sweep: Sweep | None
    files: AttackFiles


def attack_report(
    inputs: AnalysisInputs,
    spec: AttackSpec,
    out_dir: Path | str | None = None,
    *,
    limit: int | None = None,
    batch_size: int = 32,
    grid: int = 8,
    sweep: Sequence[float] | None = None,
    seed: int | None = None,
    title: str = "",
    grid_title: str | None = None,
    progress: StartProgress | None = None,
) -> AttackReport:
    """Attack the first `limit` images (all by default) as `spec` says and write the reports into `out_dir`
    (default: the run's `attack/`).

    Writes `attack.json` (an `AttackResult` whose settings are `spec.to_dict()`), `attack_grid.png` (the first
    `grid` images, titled `grid_title`, default the settings line) and, with `sweep` (budgets at which to
    repeat the attack), `sweep.json` (a `Sweep`) and `sweep.png` (titled `title`).

    Args:
        limit: attack at most this many images; recorded as asked (the result's `images` says how many).
        seed: reseed torch before the sweep, so its random starts do not depend on what ran before.
        progress: opens one task, "attack", over every attacked batch of the attack and the sweep (the
            images times the passes), so its ETA is the whole report's.
    """
    if limit is not None and limit < 1:
        raise MiniPlacesError(f"the attack's image limit must be ≥ 1; got {limit}")
    files = AttackFiles(inputs.run.attack.folder if out_dir is None else Path(out_dir))
    model, categories = inputs.model, inputs.categories
    source = AttackSource(checkpoint=str(inputs.checkpoint_path), model=inputs.checkpoint["model"],
                          root=str(inputs.root), split=inputs.split, image_size=inputs.image_size, limit=limit,
                          seed=seed)
    device = next(model.parameters()).device
    dataset: Dataset = inputs.dataset
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(inputs.dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    # Without a random start the attack is deterministic: the sweep's row at ε is the attack at ε.
    folded = sweep is not None and spec.eps in sweep and not spec.random_start
    passes = len(sweep or ()) + (0 if folded else 1)
    with (progress or no_progress)("attack", len(dataset) * passes) as advance:
        rows = None
        if folded:
            assert sweep is not None
            rows = _sweep(model, loader, spec, sweep, seed, device, advance)
            result = AttackResult.from_scores(rows[list(sweep).index(spec.eps)].to_dict(), source)
        else:
            result = AttackResult.from_scores(evaluate_attack(model, loader, spec, device=device, progress=advance),
                                              source)
        result.write(files.result)

        x, y = first_images(dataset, grid, device)
        shown = attack_batch(model, x, y, spec)
        attack_grid(
            x.cpu(), shown.x_adv.cpu(), _names(categories, y), _names(categories, shown.clean_logits.argmax(1)),
            _names(categories, shown.adv_logits.argmax(1)), files.grid,
            title=spec.describe() if grid_title is None else grid_title,
            target_names=None if shown.target is None else _names(categories, shown.target),
        )
        if sweep is None:
            return AttackReport(result, None, files)
        if rows is None:
            rows = _sweep(model, loader, spec, sweep, seed, device, advance)
    swept = Sweep(rows, source)
    swept.write(files.sweep)
    sweep_plot([row.to_dict() for row in rows], files.sweep_plot, title=title)
    return AttackReport(result, swept, files)


def _sweep(model: nn.Module, loader: DataLoader, spec: AttackSpec, eps_list: Sequence[float], seed: int | None,
           device: torch.device, progress: Callable[[int], None]) -> list[AttackResult]:
    if seed is not None:
        torch.manual_seed(seed)
    return [AttackResult.from_scores(row)
            for row in robustness_sweep(model, loader, spec, eps_list, device=device, progress=progress)]
