"""Evaluate a checkpoint on a labelled split and write the result as `eval_<split>.json`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from miniplaces.config import TTA_MODES, TrainConfig, config_from_dict
from miniplaces.data import read_categories
from miniplaces.data.layout import read_split
from miniplaces.engine.device import resolve_device
from miniplaces.engine.distributed import DistInfo
from miniplaces.engine.loaders import build_val_batches
from miniplaces.engine.train import MULTI_CROP, evaluate
from miniplaces.errors import MiniPlacesError
from miniplaces.models.io import CONFIG_NAME, load_model_any, resolve_model_path
from miniplaces.progress import StartProgress, no_progress
from miniplaces.records import ClassAccuracy, EvalResult
from miniplaces.rundir import eval_json_beside


def evaluate_checkpoint(path: Path | str, root: Path | str, *, split: str = "val", tta: str | None = None,
                        out: Path | str | None = None, batch_size: int = 256, device: str = "auto",
                        workers: int = 4, loader: Literal["dataloader", "cache"] = "dataloader",
                        limit: int | None = None, progress: StartProgress | None = None
                        ) -> tuple[EvalResult, Path]:
    """Evaluate a checkpoint on a labelled split; write the `EvalResult` and return it with its path.

    `path` is a checkpoint file, a run folder (its best.pt) or a safetensors export folder. The JSON goes to
    `out`, else `eval_<split>.json` beside the checkpoint (for a run's checkpoint: `RunDir.eval_json(split)`;
    for an export folder: inside it). Nothing is written when the evaluation fails.

    Args:
        loader: "dataloader" (per-sample decoding) or "cache" (the decoded cache at the checkpoint's
            image size, built when missing; same images and preprocessing, fewer decodes).
        limit: evaluate the first `limit` images of the split only, rounded up to whole batches
            (the result's `count` says how many); None: the whole split.
        tta: None, flip, five-crop or ten-crop (crops of the model's side from images resized to
            144/128 of it, as torchvision's FiveCrop / TenCrop).
        progress: opens one task, "eval", advanced by each batch's images.
    """
    if loader not in ("dataloader", "cache"):
        raise MiniPlacesError(f"loader {loader!r} is not one of dataloader, cache")
    if limit is not None and limit < 1:
        raise MiniPlacesError(f"the evaluation's image limit must be ≥ 1; got {limit}")
    path = resolve_model_path(path)
    model, checkpoint = load_model_any(path)
    if tta is not None and tta not in TTA_MODES:
        raise MiniPlacesError(f"unknown test-time augmentation {tta!r}; use {', '.join(TTA_MODES)} or none")
    if split not in ("train", "val"):
        raise MiniPlacesError(f"split {split!r} has no labels to evaluate against; use val or train")
    categories = read_categories(root)
    saved = list(checkpoint.get("categories") or [])
    if saved and saved != categories:
        raise MiniPlacesError(f"{root} has {len(categories)} categories that differ from the {len(saved)} "
                              f"{path} was trained on; evaluate on the dataset it was trained with")
    run_config = config_from_dict(checkpoint["config"]) if isinstance(checkpoint.get("config"), dict) else None
    config = dataclasses.replace(run_config or TrainConfig(), root=str(root), workers=workers, loader=loader)
    torch_device = resolve_device(device)
    model.to(torch_device)
    multi_crop = tta in MULTI_CROP
    batches = build_val_batches(str(root), config, DistInfo(), torch_device, split=split, batch_size=batch_size,
                                uncropped=multi_crop)
    steps = None if limit is None else math.ceil(limit / batch_size)
    total = len(read_split(root, split))
    if steps is not None:
        total = min(total, steps * batch_size)
    with (progress or no_progress)("eval", total) as advance:
        scores = evaluate(model, _Counted(batches, advance), device=torch_device, tta=tta,
                          tta_crop=config.image_size if multi_crop else None, num_classes=len(categories),
                          steps=steps, progress=False)
    confusion = scores.pop("confusion")  # (K, K): rows true class, columns predicted
    counts = confusion.sum(dim=1)
    per_class = (100.0 * confusion.diag() / counts.clamp(min=1)).tolist()
    result = EvalResult(
        checkpoint=str(path), model=checkpoint["model"], epoch=checkpoint.get("epoch"), split=split, tta=tta,
        image_size=config.image_size, count=scores["count"], top1=scores["top1"], top5=scores["top5"],
        loss=scores["loss"],
        per_class=[ClassAccuracy(name, acc, int(n)) for name, acc, n in zip(categories, per_class, counts.tolist(),
                                                                               strict=True)],
        confusion=confusion.tolist(),
    )
    target = Path(out) if out is not None else eval_json_beside(path / CONFIG_NAME if path.is_dir() else path, split)
    return result, result.write(target)


class _Counted:
    """`batches` (and their length) that report each batch's images once the next one is asked for, that is
    once the evaluation is done with it."""

    def __init__(self, batches: Iterable[Any], advance: Callable[[int], None]) -> None:
        self.batches, self.advance = batches, advance

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        for x, y in self.batches:
            yield x, y
            self.advance(len(y))
