"""`train_one_epoch` and `evaluate`: plain functions returning dicts of averages.

Both keep their running sums on the device and synchronise with it only every
`check_every` steps (for the progress bar and the non-finite-loss check), so the
loop runs as fast as a hand-written one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from miniplaces.attacks.training import Adversary
from miniplaces.config import TTA_MODES
from miniplaces.engine.device import synchronize
from miniplaces.engine.distributed import all_reduce_max, all_reduce_sum, unwrap_model
from miniplaces.engine.ema import ModelEma
from miniplaces.engine.metrics import RunningSums, correct_topk
from miniplaces.errors import MiniPlacesError

Batch = tuple[torch.Tensor, torch.Tensor]
# (images, labels, step in the epoch) → (images, targets): labels (B,) or probabilities (B, classes).
BatchTransform = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class NonFiniteLossError(MiniPlacesError):
    """The training loss became NaN or infinite."""


def _progress(total: int | None, initial: int, desc: str, enabled: bool) -> tqdm:
    # Quiet when stderr is not a terminal (logs, CI) or when asked.
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on `device`; `channels_last` stores the images NHWC, as the model's weights are."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


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
    """Train over `loader` (already positioned at `start_step`) until it ends or `steps` steps are done.

    Args:
        steps: the epoch's length in steps (a limit on the loader); None = the whole loader.
        start_step: steps of this epoch already done before (a resumed epoch); `sums` holds their totals.
        ema: updated from the plain module after every optimiser step.
        batch_transform: applied to each batch on the device, before the adversary and the model
            (`step` is the epoch's step index): progressive resizing, MixUp / CutMix. When it returns
            probabilities, the loss takes them as they are and the train top-1/top-5 count the label
            with the largest share (the dominant image's label).
        should_stop: polled after every step (at check points under DDP, where processes must agree);
            True ends the epoch early and the result has `completed=False`.
        on_step: called with the epoch's step index after each step (hooks, tests).
        on_log: at each check point (every `check_every` steps), called with the epoch's step index and
            this process's `loss` (mean since the last check point), `lr` and `images_per_s` (since then).
            It costs no extra synchronisation: the check point synchronises anyway.
        adversary: adversarial training: `adversary(module, x, y)` replaces each batch before the step.
            It gets the plain module (not the DDP or `torch.compile` wrapper: its input-gradient passes
            must not start DDP's gradient synchronisation), runs in float32 outside autocast, and must
            leave the module's mode alone (the attacks run it in eval mode and restore train mode).
            The train loss and accuracy are then those of the adversarial batches.

    Returns:
        loss, top1, top5 (averages over the epoch so far, all processes), lr (the last step's rate),
        steps (done in this epoch), images and time_s (of this call, all processes), completed, sums.
    """
    model.train()
    sums = sums if sums is not None else RunningSums(device)
    bad = torch.zeros((), dtype=torch.bool, device=device)
    distributed = _distributed()
    total = steps if steps is not None else (len(loader) if hasattr(loader, "__len__") else None)
    bar = _progress(total, start_step, f"epoch {epoch + 1} train", progress)
    step, images, lr, stopped = start_step, 0, optimizer.param_groups[0]["lr"], False
    plain = unwrap_model(model)
    start = last_time = time.perf_counter()
    last_sums, last_images = sums.state(), 0

    def check(final: bool) -> bool:
        """Synchronise: raise on a non-finite loss; whether all processes should stop."""
        nonlocal last_time, last_sums, last_images
        stop = bool(should_stop()) if should_stop is not None else False
        flags = all_reduce_max(float(bad.item()) + 2.0 * stop, device) if distributed else float(bad.item())
        if flags % 2 >= 1:
            raise NonFiniteLossError(
                f"the training loss became non-finite in epoch {epoch + 1} (by step {step} of the epoch); "
                "lower the learning rate, enable clip_grad or use amp=bf16 instead of fp16; "
                "the last checkpoint written before it is kept"
            )
        if not final and on_log is not None:
            now, current = time.perf_counter(), sums.state()  # [loss sum, top-1, top-5, count]
            seen = max(current[3] - last_sums[3], 1.0)
            on_log(step, {"loss": (current[0] - last_sums[0]) / seen, "lr": lr,
                          "images_per_s": (images - last_images) / max(now - last_time, 1e-9)})
            last_time, last_sums, last_images = now, current, images
        if not final and bar.n < step:
            avg = sums.averages()
            elapsed = max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{avg['loss']:.3f}", acc=f"{avg['top1']:.1f}", img_s=f"{images / elapsed:.0f}")
            bar.update(step - bar.n)
        return (flags >= 2) if distributed else stop

    for x, y in loader:
        if total is not None and step >= total:
            break
        x, y = _to_device(x, y, device, channels_last and batch_transform is None)
        target = y
        if batch_transform is not None:
            x, target = batch_transform(x, y, step)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        # Soft targets (MixUp/CutMix) score against the label with the largest share.
        y = target.argmax(1) if target.ndim == 2 else target
        # Cleared before the attack: were it to touch the parameters' .grad, the step would show it.
        optimizer.zero_grad(set_to_none=True)
        if adversary is not None:
            x = adversary(plain, x, y)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
            loss = criterion(logits, target)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        if ema is not None:
            ema.update(plain)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        bad |= ~torch.isfinite(loss.detach())
        correct1, correct5 = correct_topk(logits.detach(), y)
        sums.update(loss, correct1, correct5, y.shape[0])
        step += 1
        images += y.shape[0]
        if on_step is not None:
            on_step(step)
        at_check = step % check_every == 0
        if (not distributed and should_stop is not None and should_stop()) or (at_check and check(False)):
            stopped = True
            break
    check(True)
    synchronize(device)
    elapsed = time.perf_counter() - start
    bar.close()
    global_images = float(images)
    if distributed:
        global_images = float(all_reduce_sum(torch.tensor([global_images], device=device)).item())
    reduced = RunningSums(device)
    reduced.load_state(sums.state())
    reduced.all_reduce()
    return {
        **reduced.averages(),
        "lr": lr,
        "steps": step,
        "images": int(global_images),
        "time_s": elapsed,
        # A stop requested on the epoch's last step still completes the epoch.
        "completed": not stopped or (total is not None and step >= total),
        "sums": sums.state(),
    }


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
    bar = _progress(total, 0, "eval", progress)
    for step, (x, y) in enumerate(loader):
        if total is not None and step >= total:
            break
        x, y = _to_device(x, y, device, channels_last)
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
