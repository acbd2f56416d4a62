"""`Trainer`: the training step, top to bottom, and an epoch made of it.

`Trainer.step` is one optimiser step: the adversarial batch (when the run trains on one), forward and
loss under autocast, backward (scaled under fp16), the gradients unscaled then clipped, the optimiser
step, the EMA, the schedule. `Trainer.epoch` runs steps over the batches from a position in the run (a
resumed epoch starts mid-way); it keeps the running sums on the device and synchronises with it only every
`check_every` steps (progress, non-finite loss, stop requests), so the loop runs as fast as a
hand-written one.

Progress: on a terminal a bar with the epoch's ETA and the run's; otherwise (a log file, CI, a pipe) a plain
line, through `logging` so that `train.log` has it too, at check points at most every
`miniplaces.progress.progress_interval()` seconds (`MINIPLACES_PROGRESS_INTERVAL`, 30 by default).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from miniplaces.attacks.training import Adversary, make_adversary
from miniplaces.config import ConfigError, TrainConfig, adversarial_spec
from miniplaces.engine.device import synchronize
from miniplaces.engine.distributed import DistInfo, all_reduce_max, all_reduce_sum, unwrap_model, wrap_model
from miniplaces.engine.ema import ModelEma
from miniplaces.engine.loaders import TrainBatches
from miniplaces.engine.metrics import RunningSums, correct_topk
from miniplaces.engine.optim import build_optimizer
from miniplaces.engine.schedule import warmup_cosine
from miniplaces.errors import MiniPlacesError
from miniplaces.progress import duration_text, progress_interval

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
# (images, labels, step in the epoch) → (images, targets): labels (B,) or probabilities (B, classes).
BatchTransform = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


class NonFiniteLossError(MiniPlacesError):
    """The training loss became NaN or infinite."""


def progress_bar(total: int | None, initial: int, desc: str, enabled: bool) -> tqdm:
    # Quiet when stderr is not a terminal (logs, CI) or when asked.
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device,
              channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on `device`; `channels_last` stores the images NHWC, as the model's weights are."""
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Labels (B,) of targets: soft targets (MixUp / CutMix) count the label with the largest share."""
    return target.argmax(1) if target.ndim == 2 else target


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@dataclass
class Trainer:
    """What a training step uses, and the batches it steps over.

    Args:
        model: what the steps run through (DDP-wrapped and/or compiled); the EMA and the adversary get
            the plain module under it.
        batches: a run's `TrainBatches` (positioned at each epoch), or any iterable of batches (taken
            from its start).
        scaler: fp16's gradient scaler; the gradients are unscaled before they are clipped.
        clip_grad: the largest norm of all gradients together; None = no clipping.
        adversary: adversarial training: `adversary(module, x, y)` replaces each batch before the step.
            It gets the plain module (its input-gradient passes must not start DDP's gradient
            synchronisation), runs in float32 outside autocast, and must leave the module's mode alone.
            The train loss and accuracy are then those of the adversarial batches.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batches: TrainBatches | Iterable[Batch]
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    ema: ModelEma | None = None
    amp_dtype: torch.dtype | None = None
    clip_grad: float | None = None
    channels_last: bool = False
    adversary: Adversary | None = None

    @property
    def plain(self) -> nn.Module:
        return unwrap_model(self.model)

    def step(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a batch on the device; its loss and logits, detached.

        `target` is labels (B,) or probabilities (B, classes), which the loss takes as they are.
        """
        # Cleared before the attack: were it to touch the parameters' .grad, the step would show it.
        self.optimizer.zero_grad(set_to_none=True)
        if self.adversary is not None:
            x = self.adversary(self.plain, x, hard_labels(target))
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = self.model(x)
            loss = self.criterion(logits, target)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.clip_grad is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.plain)
        self.scheduler.step()
        return loss.detach(), logits.detach()

    def epoch(
        self,
        epoch: int = 0,
        *,
        steps: int | None = None,
        start_step: int = 0,
        sums: RunningSums | None = None,
        transform: BatchTransform | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_step: Callable[[int], None] | None = None,
        on_log: Callable[[int, dict[str, float]], None] | None = None,
        check_every: int = 20,
        progress: bool = True,
        side: int | None = None,
        steps_after: int = 0,
    ) -> dict[str, Any]:
        """Train epoch `epoch` (0-based) from step `start_step` until the batches end or `steps` steps are done.

        Args:
            steps: the epoch's length in steps; None = a `TrainBatches`' steps_per_epoch, else all batches.
            start_step: steps of this epoch already done before (a resumed epoch); `sums` holds their totals.
            transform: applied to each batch on the device, before the adversary and the model (MixUp /
                CutMix). With probabilities as targets the train top-1/top-5 count the label
                with the largest share (the dominant image's label).
            should_stop: polled after every step (at check points under DDP, where processes must agree);
                True ends the epoch early and the result has `completed=False`.
            on_step: called with the epoch's step index after each step (hooks, tests).
            on_log: at each check point (every `check_every` steps), called with the epoch's step index and
                this process's `loss` (mean since the last check point), `lr` and `images_per_s` (since then).
                It costs no extra synchronisation: the check point synchronises anyway.
            side: the side a `TrainBatches` makes its batches at (progressive resizing); None: `image_size`.
            progress: show progress (a bar on a terminal, else plain lines; see the module's docstring).
            steps_after: the run's steps after this epoch, for the run's ETA (which leaves out validation).

        Returns:
            loss, top1, top5 (averages over the epoch so far, all processes), lr (the last step's rate),
            steps (done in this epoch), images and time_s (of this call, all processes), completed, sums.
        """
        device = self.device
        if isinstance(self.batches, TrainBatches):
            loader: Iterable[Batch] = self.batches.position(epoch, start_step, side)
            total = steps if steps is not None else self.batches.steps_per_epoch
        else:
            loader = self.batches
            total = steps if steps is not None else (len(loader) if hasattr(loader, "__len__") else None)
        self.model.train()
        sums = sums if sums is not None else RunningSums(device)
        bad = torch.zeros((), dtype=torch.bool, device=device)
        distributed = _distributed()
        desc = f"epoch {epoch + 1} train"
        bar = progress_bar(total, start_step, desc, progress)
        lines = progress and not sys.stderr.isatty()
        interval = progress_interval() if lines else 0.0
        step, images, lr, stopped = start_step, 0, self.optimizer.param_groups[0]["lr"], False
        start = last_time = last_line = time.perf_counter()
        last_sums, last_images = sums.state(), 0

        def show(now: float) -> None:
            nonlocal last_line
            avg, per_step = sums.averages(), (now - start) / max(step - start_step, 1)
            left = max((total or step) - step, 0)
            eta, run_eta = duration_text(left * per_step), duration_text((left + steps_after) * per_step)
            speed = images / max(now - start, 1e-9)
            if not lines:
                bar.set_postfix(loss=f"{avg['loss']:.3f}", acc=f"{avg['top1']:.1f}", img_s=f"{speed:.0f}",
                                run_eta=run_eta)
                bar.update(step - bar.n)
            elif now - last_line >= interval:
                last_line = now
                logger.info("%s: step %d/%s  loss %.3f  top1 %.1f  %.0f img/s  ETA %s (epoch), %s (run)", desc, step,
                            total if total is not None else "?", avg["loss"], avg["top1"], speed, eta, run_eta)

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
            if not final and progress and step > start_step:
                show(time.perf_counter())
            return (flags >= 2) if distributed else stop

        for x, y in loader:
            if total is not None and step >= total:
                break
            x, target = to_device(x, y, device, self.channels_last and transform is None)
            if transform is not None:
                x, target = transform(x, target, step)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            y = hard_labels(target)
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses (the schedule moves it after)
            loss, logits = self.step(x, target)
            bad |= ~torch.isfinite(loss)
            correct1, correct5 = correct_topk(logits, y)
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


def build_trainer(config: TrainConfig, model: nn.Module, batches: TrainBatches, info: DistInfo,
                  device: torch.device, amp_dtype: torch.dtype | None) -> Trainer:
    """The trainer `config` describes for `model` (plain, on `device`, with its initial weights).

    The model is wrapped for DDP (SyncBatchNorm first with `sync_bn`) and compiled as asked; the
    optimiser, the warm-up + cosine schedule over all the run's steps, fp16's gradient scaler, the EMA
    (a copy of the initial weights, which a checkpoint's replaces), the loss and the adversary follow.
    """
    if config.sync_bn and info.enabled and device.type != "cuda":
        # torch's SyncBatchNorm has kernels for GPUs only: it would fail in the first forward.
        raise ConfigError(f"key 'sync_bn' needs CUDA devices, and this run trains on {device.type}; set it to false")
    wrapped = wrap_model(model, info, device, sync_bn=config.sync_bn)
    train_model = torch.compile(wrapped) if config.compile else wrapped
    optimizer = build_optimizer(model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                momentum=config.momentum, nesterov=config.nesterov,
                                no_wd_norm_bias=config.no_wd_norm_bias, muon_lr=config.muon_lr,
                                muon_momentum=config.muon_momentum)
    steps = batches.steps_per_epoch
    scheduler = warmup_cosine(optimizer, total_steps=config.epochs * steps,
                              warmup_steps=round(config.warmup_epochs * steps), min_lr=config.min_lr)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    ema = ModelEma(model, config.ema_decay, warmup=config.ema_warmup) if config.ema else None
    # With MixUp/CutMix the targets are probabilities; the loss smooths them as it smooths labels.
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    return Trainer(train_model, optimizer, scheduler, criterion, batches, device, scaler=scaler, ema=ema,
                   amp_dtype=amp_dtype, clip_grad=config.clip_grad, channels_last=config.channels_last,
                   adversary=make_adversary(adversarial_spec(config)))


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """SIGINT/SIGTERM set a flag (for `Trainer.epoch`'s `should_stop`); a second one aborts at once."""
    requested = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        if requested["stop"]:
            raise KeyboardInterrupt
        requested["stop"] = True
        logger.warning("%s: finishing the current step and writing last.pt (send it again to abort now)",
                       signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield lambda: requested["stop"]
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: requested["stop"]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
