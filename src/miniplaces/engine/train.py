"""`evaluate` and `train_one_epoch`: plain functions returning dicts of averages.

`evaluate` keeps its running sums on the device and synchronises with it once, at the end.
`train_one_epoch` is `miniplaces.engine.loop.Trainer`'s epoch as one call, for the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from miniplaces.attacks.training import Adversary
from miniplaces.config import TTA_MODES
from miniplaces.engine.distributed import all_reduce_sum
from miniplaces.engine.ema import ModelEma
from miniplaces.engine.loop import Batch, BatchTransform, Trainer, progress_bar, to_device
from miniplaces.engine.metrics import RunningSums, correct_topk
from miniplaces.errors import MiniPlacesError


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    device: torch.device,
    criterion: nn.Module,
    epoch: int = 0,
    steps: int | None = None,
    start_step: int = 0,
    sums: RunningSums | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float | None = None,
    channels_last: bool = False,
    adversary: Adversary | None = None,
    ema: ModelEma | None = None,
    batch_transform: BatchTransform | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    check_every: int = 20,
    progress: bool = True,
) -> dict[str, Any]:
    """One epoch over `loader` as a plain function (the benchmarks' form): `Trainer(...).epoch(...)`.

    The arguments are those of `miniplaces.engine.loop.Trainer` and its `epoch` method
    (`batch_transform` is the epoch's `transform`); so is the returned dict.
    """
    trainer = Trainer(model, optimizer, scheduler, criterion, loader, device, scaler=scaler, ema=ema,
                      amp_dtype=amp_dtype, clip_grad=clip_grad, channels_last=channels_last, adversary=adversary)
    return trainer.epoch(epoch, steps=steps, start_step=start_step, sums=sums, transform=batch_transform,
                         should_stop=should_stop, on_step=on_step, on_log=on_log, check_every=check_every,
                         progress=progress)


# Multi-crop modes take crops of `crop` pixels from images resized to `resize_for(crop)`, as torchvision's
# FiveCrop / TenCrop do: the four corners and the centre (ten-crop: and their mirror images).
MULTI_CROP = ("five-crop", "ten-crop")


def five_crops(x: torch.Tensor, crop: int) -> list[torch.Tensor]:
    """The corners (top-left, top-right, bottom-left, bottom-right) and centre crops of side `crop` of
    `x` (B, C, H, W), each (B, C, crop, crop), with torchvision's centre offset round((H − crop) / 2)."""
    h, w = x.shape[-2:]
    if crop > min(h, w):
        raise ValueError(f"crop {crop} is larger than the images ({h}×{w})")
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (top, left)]
    return [x[..., i : i + crop, j : j + crop] for i, j in corners]


def tta_logits(model: nn.Module, x: torch.Tensor, tta: str | None, crop: int | None = None) -> torch.Tensor:
    """Logits of `x`, or the mean of the logits of its test-time views.

    `flip`: `x` and its mirror image. `five-crop` / `ten-crop`: `x` holds images resized to
    `resize_for(crop)` (larger than the model's side `crop`), and the views are their five crops
    (and the mirror images of those); `crop` is required.
    """
    if tta is None:
        return model(x)
    if tta == "flip":
        return (model(x) + model(x.flip(-1))) / 2
    if tta in MULTI_CROP:
        if crop is None:
            raise ValueError(f"test-time augmentation {tta} needs the crop side")
        views = five_crops(x, crop)
        if tta == "ten-crop":
            views += [v.flip(-1) for v in views]
        b = x.shape[0]
        logits = model(torch.cat(views))  # (V·B, classes): one forward for all views
        return logits.view(len(views), b, -1).mean(0)
    raise MiniPlacesError(f"unknown test-time augmentation {tta!r}; use {', '.join(TTA_MODES)} or none")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    device: torch.device,
    tta: str | None = None,
    tta_crop: int | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    steps: int | None = None,
    num_classes: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Loss (cross-entropy), top-1 and top-5 in percent over `loader` (summed over all processes).

    With `num_classes`, also `confusion`: an int64 (C, C) tensor, rows true class, columns predicted.
    `tta`, `tta_crop`: see `tta_logits` (multi-crop modes want a loader of uncropped, resized images).
    """
    model.eval()
    sums = RunningSums(device)
    confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.int64, device=device)
    total = steps if steps is not None else (len(loader) if hasattr(loader, "__len__") else None)
    bar = progress_bar(total, 0, "eval", progress)
    for step, (x, y) in enumerate(loader):
        if total is not None and step >= total:
            break
        x, y = to_device(x, y, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = tta_logits(model, x, tta, tta_crop)
        logits = logits.float()
        loss = nn.functional.cross_entropy(logits, y)
        correct1, correct5 = correct_topk(logits, y)
        sums.update(loss, correct1, correct5, y.shape[0])
        if num_classes is not None:
            pairs = y * num_classes + logits.argmax(dim=1)
            confusion += torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)
        bar.update(1)
    bar.close()
    sums.all_reduce()
    result: dict[str, Any] = {**sums.averages(), "count": sums.count}
    if num_classes is not None:
        result["confusion"] = all_reduce_sum(confusion).cpu()
    return result
