"""`train(config)`: a run from start to finish, around the engine's `Trainer` and `evaluate`.

The run's files are those of `miniplaces.rundir.RunDir`: `config.yaml`, `metrics.jsonl` and `metrics.csv`
(one `MetricsRow` per epoch), `checkpoints/last.pt` (every epoch, and on Ctrl-C mid-epoch),
`checkpoints/best.pt` (best val top-1: the EMA's when the run keeps one; never an epoch whose val loss is
not finite), `train.log` and the trackers of `log_to` (`miniplaces.tracking`). Only rank 0 writes. A
checkpoint is a `TrainState`, so a run continues exactly (mid-epoch too) from `last.pt`. Before anything is
built, the run folder is claimed (`miniplaces.rundir.claim_run`); a resume refuses settings that contradict
its checkpoint (`miniplaces.engine.resume`); `init_from` starts it from another run's weights.

Read top to bottom: `train` → `open_resume` → `_claim_on_main` → `_build` → `_open_run`
→ `_train_epochs` (one `_train_epoch` each, the trackers told) → the summary, the claim is released.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from miniplaces import tracking
from miniplaces.config import ConfigError, TrainConfig, adversarial_spec, resolve, save_config, to_dict
from miniplaces.data import read_categories
from miniplaces.data.batch_augment import MixCut, batch_rng, progressive_size
from miniplaces.engine.checkpoint import build_model, save_checkpoint
from miniplaces.engine.device import resolve_amp, resolve_device
from miniplaces.engine.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_max,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from miniplaces.engine.init_from import init_weights, load_init_source, run_model
from miniplaces.engine.loaders import build_train_batches, build_val_batches, first_images
from miniplaces.engine.loop import BatchTransform, Trainer, build_trainer, stop_on_signals
from miniplaces.engine.metrics import peak_memory, reset_peak_memory
from miniplaces.engine.resume import open_resume, resume_state
from miniplaces.engine.state import TrainState, seed_everything
from miniplaces.engine.train import evaluate
from miniplaces.errors import MiniPlacesError
from miniplaces.fileio import remove_stale_tmp
from miniplaces.progress import progress_interval
from miniplaces.records import MetricsRow, read_metrics, write_metrics
from miniplaces.rundir import RunClaim, RunDir, claim_run

logger = logging.getLogger(__name__)


class TrainingInterrupted(MiniPlacesError):
    """SIGINT / SIGTERM stopped a run after writing `last.pt`; the message says how to resume."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir


# Training images `data_init` shows the model (airbench whitens its stem from 5,000 CIFAR images).
DATA_INIT_IMAGES = 2048


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"key 'amp' is fp16, which needs a CUDA device (this run uses {device.type}); use bf16")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def train(config: TrainConfig, *, resume: Path | str | None = None, on_step: Callable[[int], None] | None = None,
          progress: bool = True) -> Path:
    """Train as `config` says (or continue the run of `resume`, a run dir or checkpoint); return the run dir.

    Raises `TrainingInterrupted` after a SIGINT/SIGTERM (with `last.pt` written), `RunExistsError`
    when a new run's folder already holds one, and `NonFiniteLossError` when the loss stops being
    finite (the last checkpoint is kept).
    """
    config = resolve(config)
    # `amp: auto` is resolved before the resume check compares it with the checkpoint's; config.yaml says why.
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")), source="key 'device'")
    amp, amp_note = resolve_amp(config.amp, device)
    config = dataclasses.replace(config, amp=amp)
    if progress:
        progress_interval()  # a bad MINIPLACES_PROGRESS_INTERVAL is said before anything is written
    checkpoint, run, source = None, None, None
    if resume is not None:
        config, checkpoint, run = open_resume(config, resume)
    elif config.init_from:
        source = load_init_source(config)  # before anything is written
    info = init_distributed(device.type)
    claim = None
    try:
        # Before the run folder is claimed: a model argument it refuses is an error with nothing written.
        model = _initial_model(config, checkpoint, source)
        if run is None:  # a new run: `<out_dir>/<name>`, named after the model and the start time unless given
            name = config.name or all_gather_objects(f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}", info)[0]
            config, run = dataclasses.replace(config, name=name), RunDir(Path(config.out_dir) / name)
        claim = _claim_on_main(run, info, device, fresh=resume is None)
        with tracking.train_log(run) if info.is_main else nullcontext():
            logger.info("precision: amp %s (%s)", amp, amp_note)
            parts = _build(run, config, info, device, model, checkpoint,
                           seed_weights=checkpoint is None and source is None)
            _open_run(parts, f"amp: {amp} ({amp_note})")
            _train_epochs(parts, on_step, progress)
        return run.path
    finally:
        if claim is not None:
            claim.release()
        cleanup_distributed()


def _claim_on_main(run: RunDir, info: DistInfo, device: torch.device, *, fresh: bool) -> RunClaim | None:
    """Rank 0 claims the folder; every process learns whether it could, so none waits for a rank that failed."""
    claim, error = None, None
    if info.is_main:
        try:
            claim = claim_run(run, fresh=fresh)
        except MiniPlacesError as err:
            error = err
    if all_reduce_max(float(error is not None), device) > 0:
        raise error or MiniPlacesError(f"rank 0 could not claim the run directory {run.path} (see its error)")
    return claim


@dataclass
class _Parts:
    """What a run trains with: the state its checkpoints hold, the trainer that steps it, the val batches."""

    run: RunDir
    info: DistInfo
    state: TrainState
    trainer: Trainer  # its model is the DDP-wrapped and/or compiled one the steps run through
    steps: int  # per epoch
    val_loader: Any
    mixcut: MixCut | None = None


def _initial_model(config: TrainConfig, checkpoint: dict[str, Any] | None,
                   source: tuple[Path, dict[str, Any]] | None) -> nn.Module:
    """The run's model as its seed makes it, with `init_from`'s weights (`source`) or the checkpoint's."""
    seed_everything(config.seed)
    if checkpoint is not None:
        # Without fetching pretrained weights: the file has the weights (the trained ones, not the EMA's).
        return build_model(checkpoint, ema=False)
    model = run_model(config)
    if source is not None:
        init_weights(model, *source)
    return model


def _build(run: RunDir, config: TrainConfig, info: DistInfo, device: torch.device, model: nn.Module,
           checkpoint: dict[str, Any] | None, *, seed_weights: bool) -> _Parts:
    """`model` (from `_initial_model`) on the device, data, optimiser, schedule and adversary; then the
    checkpoint's state, if resuming. `seed_weights`: the model holds its seed's weights (`data_init` may set them)."""
    dtype = amp_dtype(config.amp, device)
    categories = read_categories(config.root)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    batches = build_train_batches(config, info, device)
    if config.data_init and seed_weights:
        # Before DDP wraps the model: DDP then gives every process rank 0's weights.
        model.init_from_data(first_images(batches, DATA_INIT_IMAGES))  # type: ignore[operator]
    val_loader = build_val_batches(config.root, config, info, device)
    trainer = build_trainer(config, model, batches, info, device, dtype)
    state = TrainState(model, trainer.optimizer, trainer.scheduler, trainer.scaler, config, categories, info, device,
                       ema=trainer.ema)
    if checkpoint is not None:
        resume_state(state, checkpoint)
    else:
        # The model's initial weights are the same on every process; its random layers (dropout) should not be.
        seed_everything(config.seed + info.rank)
    mixcut = (MixCut(len(categories), mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
                     prob=config.mix_prob, switch_prob=config.mix_switch_prob)
              if config.mixup_alpha > 0 or config.cutmix_alpha > 0 else None)
    return _Parts(run, info, state, trainer, batches.steps_per_epoch, val_loader, mixcut)


def _open_run(parts: _Parts, note: str | None = None) -> None:
    """Write the config (rank 0, `note` as its leading comment) and drop the metrics rows past the checkpoint."""
    run, info, state, config = parts.run, parts.info, parts.state, parts.state.config
    if info.is_main:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        # Temporary files of writes a killed process left (best.pt's would otherwise wait for a better epoch).
        for target in (run.last, run.best, run.metrics, run.config):
            remove_stale_tmp(target)
        save_config(config, run.config, note)
        # A crash between writing a row and its checkpoint leaves a row the resumed run repeats.
        kept = [row for row in read_metrics(run.metrics) if row.epoch <= state.epoch]
        write_metrics(run.metrics, kept)
    barrier(info)
    spec = adversarial_spec(config)
    logger.info("run %s: %s on %s%s, %d epochs × %d steps of %d images%s", run.path, config.model, state.device,
                f" × {info.world_size} processes" if info.enabled else "", config.epochs, parts.steps,
                config.batch_size, "" if spec is None else f", adversarial training: {spec.describe()}")
    if state.epoch or state.step_in_epoch:
        logger.info("resuming at epoch %d, step %d/%d", state.epoch + 1, state.step_in_epoch, parts.steps)


def _train_epochs(parts: _Parts, on_step: Callable[[int], None] | None, progress: bool) -> None:
    """The epochs left; each ends with a metrics row, `last.pt` and maybe `best.pt`, then the trackers (rank 0)
    hear of it. Signals stop it cleanly; a completed run ends with its summary."""
    run, info, state, config = parts.run, parts.info, parts.state, parts.state.config
    rows = read_metrics(run.metrics) if info.is_main else []
    trackers = tracking.TrackerGroup([] if not info.is_main else tracking.open_trackers(
        config.log_to, run, out_dir=Path(config.out_dir), kept=rows, resumed_epoch=state.epoch,
        resumed_step=state.epoch * parts.steps + state.step_in_epoch))

    def on_log(step: int, values: dict[str, float]) -> None:
        # Per-step scalars at the global step; this process's own window (rank 0's, the one that writes).
        trackers.log_step(state.epoch * parts.steps + step, values)

    with stop_on_signals() as should_stop, trackers:
        trackers.start(tracking.flat_params(to_dict(config)))
        while state.epoch < config.epochs:
            row = _train_epoch(parts, on_step, progress and info.is_main, should_stop,
                               on_log if info.is_main else None)
            improved = state.finish_epoch(row)
            payload = state.state_dict(metrics=row.to_dict())
            if info.is_main:
                rows.append(row)
                write_metrics(run.metrics, rows)
                # best.pt first: a kill between the two leaves last.pt at the previous epoch, whose resume
                # redoes this epoch exactly and writes both again; the other order could lose a best epoch.
                if improved:
                    save_checkpoint(payload, run.best)
                save_checkpoint(payload, run.last)
                trackers.log_epoch(row, rows, state.epoch * parts.steps)
            barrier(info)
            logger.info("%s", tracking.epoch_line(row, rows or [row], config.epochs, best=improved))
            # A signal during validation or checkpointing stops here, at the epoch boundary.
            if state.epoch < config.epochs and all_reduce_max(float(should_stop()), state.device) > 0:
                raise _interrupted(run, f"after epoch {state.epoch}")
        trackers.finish(tracking.final_numbers(rows), run.best if run.best.is_file() else None)
    for line in tracking.summary_lines(rows, run):
        logger.info(line)


def _train_epoch(parts: _Parts, on_step: Callable[[int], None] | None, progress: bool, should_stop: Callable[[], bool],
                 on_log: Callable[[int, dict[str, float]], None] | None) -> MetricsRow:
    """One epoch from `state.step_in_epoch` on, then validation; on a stop signal, `last.pt` and an interruption."""
    run, info, state, config, trainer = parts.run, parts.info, parts.state, parts.state.config, parts.trainer
    device, epoch = state.device, state.epoch
    reset_peak_memory(device)
    t0 = time.perf_counter()
    tr = trainer.epoch(epoch, start_step=state.step_in_epoch, sums=state.running_sums(),
                       transform=_batch_transform(config, parts.mixcut, epoch, info.rank), should_stop=should_stop,
                       on_step=on_step, on_log=on_log, check_every=config.log_every, progress=progress,
                       side=train_size(config, epoch), steps_after=(config.epochs - epoch - 1) * parts.steps)
    if not tr["completed"]:
        state.pause(tr["steps"], tr["sums"])
        payload = state.state_dict()
        if info.is_main:
            save_checkpoint(payload, run.last)
        barrier(info)
        raise _interrupted(run, f"in epoch {epoch + 1} after step {tr['steps']}/{parts.steps}")

    def scores(model: nn.Module) -> dict[str, Any]:
        return evaluate(model, parts.val_loader, device=device, tta=config.tta, amp_dtype=trainer.amp_dtype,
                        channels_last=config.channels_last, steps=config.limit_val_batches, progress=progress)

    val = scores(trainer.model)
    ema_val = scores(state.ema.module) if state.ema is not None else {}
    memory_mb, memory_kind = peak_memory(device)
    return MetricsRow(
        epoch=epoch + 1, train_loss=tr["loss"], train_top1=tr["top1"], train_top5=tr["top5"],
        val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"], lr=tr["lr"],
        epoch_time_s=time.perf_counter() - t0, images_per_s=tr["images"] / max(tr["time_s"], 1e-9),
        peak_memory_mb=memory_mb, peak_memory_kind=memory_kind,
        val_loss_ema=ema_val.get("loss"), val_top1_ema=ema_val.get("top1"), val_top5_ema=ema_val.get("top5"),
    )


def _interrupted(run: RunDir, when: str) -> TrainingInterrupted:
    return TrainingInterrupted(f"interrupted {when}; {run.last} written. Resume with: miniplaces train --resume "
                               f"{run.path}", run.path)


def train_size(config: TrainConfig, epoch: int) -> int:
    """The side of the training images in `epoch` (0-based): `image_size`, or less early on with
    progressive resizing (`progressive_*` keys)."""
    end_epoch = config.progressive_end_epoch if config.progressive_end_epoch is not None else config.epochs - 1
    return progressive_size(epoch, start_size=config.progressive_start_size, end_size=config.image_size,
                            start_epoch=config.progressive_start_epoch, end_epoch=end_epoch)


def _batch_transform(config: TrainConfig, mixcut: MixCut | None, epoch: int, rank: int) -> BatchTransform | None:
    """The epoch's batch operations on the device, for both loaders: MixUp/CutMix drawn from
    (seed, epoch, step, rank), so a resumed epoch replays exactly. (The loaders make batches at the
    epoch's progressive side themselves: `TrainBatches.position`.)"""
    if mixcut is None:
        return None

    def transform(x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mixcut(x, y, batch_rng(config.seed, epoch, step, rank, 3))

    return transform
