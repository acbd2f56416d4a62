"""`train(config)`: a run from start to finish, around the engine's `train_one_epoch` / `evaluate`.

The run's files are those of `miniplaces.rundir.RunDir`: `config.yaml`, `metrics.jsonl`
and `metrics.csv` (one `MetricsRow` per epoch), `checkpoints/last.pt` (every epoch, and on
Ctrl-C mid-epoch), `checkpoints/best.pt` (best val top-1: the EMA's when the run keeps one; never
an epoch whose val loss is not finite) and `tb/` (per-epoch scalars; per-step `step/loss`,
`step/lr`, `step/images_per_s` every `log_every` steps in `tb/steps/`). Only rank 0 writes. A
checkpoint is a `TrainState`, so a run continues exactly (mid-epoch too) from `last.pt`.

Before anything is built, the run folder is claimed (`claim_run`: the folder is created and a
lock held on its `.train.lock` for the run's life, released by the kernel when the process
dies), so two trainings cannot write into one folder, and a folder whose start died before its
first checkpoint can be started again. A resume refuses settings that contradict the checkpoint
(`check_resume`); `RESUME_MAY_CHANGE` lists those it applies.

Read top to bottom: `train` → `check_resume` → `_name_run` → `claim_run` → `_build` → `_open_run`
→ `_train_epochs` (one `_train_epoch` each) → the writer closes, the claim is released.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from miniplaces.attacks.training import make_adversary
from miniplaces.config import ConfigError, TrainConfig, adversarial_spec, config_from_dict, resolve, save_config
from miniplaces.data import read_categories
from miniplaces.data.batch_augment import MixCut, batch_rng, progressive_size  # bf16: resize_batch dropped
from miniplaces.engine.checkpoint import CheckpointError, build_model, load_checkpoint, save_checkpoint
from miniplaces.engine.device import resolve_amp, resolve_device  # bf16: resolve_amp
from miniplaces.engine.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_max,
    barrier,
    cleanup_distributed,
    init_distributed,
    wrap_model,
)
from miniplaces.engine.ema import ModelEma
from miniplaces.engine.loaders import TrainBatches, build_train_batches, build_val_batches, first_images
from miniplaces.engine.metrics import RunningSums, peak_memory, reset_peak_memory
from miniplaces.engine.optim import build_optimizer
from miniplaces.engine.schedule import warmup_cosine
from miniplaces.engine.state import TrainState, seed_everything
from miniplaces.engine.train import BatchTransform, evaluate, train_one_epoch
from miniplaces.errors import MiniPlacesError
from miniplaces.rundir import (
    MetricsRow,
    RunDir,
    RunWriteError,
    read_metrics,
    remove_stale_tmp,
    write_metrics,
    write_metrics_csv,
)

logger = logging.getLogger(__name__)


class TrainingInterrupted(MiniPlacesError):
    """SIGINT / SIGTERM stopped a run after writing `last.pt`; the message says how to resume."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir


class RunExistsError(MiniPlacesError):
    """A new run would overwrite a run folder that already holds one."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir


class RunBusyError(MiniPlacesError):
    """Another live process holds the run folder (it is training or resuming that run)."""


# Training images `data_init` shows the model (airbench whitens its stem from 5,000 CIFAR images).
DATA_INIT_IMAGES = 2048

# What a resume may change; every other key must equal the checkpoint's (see `check_resume`).
RESUME_MAY_CHANGE: dict[str, str] = {
    "epochs": "more epochs (never fewer than done); the cosine schedule of the remaining steps follows it",
    "device": "where the run continues",
    "workers": "loader processes",
    "log_every": "steps between progress updates",
    "limit_val_batches": "how much of the val split each epoch evaluates",
    "tta": "test-time augmentation of the per-epoch validation",
    "root": "the dataset folder, if its categories are the checkpoint's",
    "name": "ignored: a resumed run stays in the folder of its checkpoint",
    "out_dir": "ignored: a resumed run stays in the folder of its checkpoint",
}


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"key 'amp' is fp16, which needs a CUDA device (this run uses {device.type}); use bf16")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def checkpoint_of(run_or_checkpoint: Path | str) -> Path:
    """`runs/<name>` → `runs/<name>/checkpoints/last.pt`; a file stays itself."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        path = RunDir(path).last
    if not path.is_file():
        hint = ""
        if path == RunDir.of_checkpoint(path).last and path.parent.parent.is_dir():
            hint = ("; the run stopped before its first checkpoint, so start it again with the same name "
                    "instead of resuming it")
        raise CheckpointError(f"nothing to resume: {path} does not exist{hint}")
    return path


def resume_config(run_or_checkpoint: Path | str) -> TrainConfig:
    """The config a checkpoint was trained with (settings given at resume are applied on top by the caller)."""
    path = checkpoint_of(run_or_checkpoint)
    return _saved_config(load_checkpoint(path), path)


def _saved_config(checkpoint: dict[str, Any], path: Path) -> TrainConfig:
    if not isinstance(checkpoint.get("config"), dict):
        raise CheckpointError(f"{path} holds no training config, so it cannot be resumed")
    return config_from_dict(checkpoint["config"], where=f"{path} (config)")


def check_resume(config: TrainConfig, checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse to continue `checkpoint` (at `path`) with a resolved `config` that contradicts it.

    Only the keys of `RESUME_MAY_CHANGE` may differ from the checkpoint's config: the others
    (model, data size, optimiser, seed, …) would silently train something else than the run
    says it is. Nothing is written before this check.
    """
    problem = _training_state_problem(checkpoint)
    if problem is not None:
        raise CheckpointError(f"{path} cannot be resumed: {problem}; resume from another checkpoint, or start "
                              "a new run from its weights")
    saved = resolve(_saved_config(checkpoint, path))
    changed = [f"{key} {getattr(saved, key)!r} → {getattr(config, key)!r}" for key in _keys()
               if key not in RESUME_MAY_CHANGE and getattr(config, key) != getattr(saved, key)]
    spec = checkpoint["model"]
    if spec["name"] != config.model and not any(c.startswith("model ") for c in changed):
        changed.insert(0, f"model {spec['name']!r} → {config.model!r}")
    if changed:
        raise ConfigError(f"cannot resume {path} with other settings than it was trained with: "
                          f"{'; '.join(changed)}. Only {', '.join(RESUME_MAY_CHANGE)} may change on resume; "
                          "start a new run (another name) to change the rest")
    done = int(checkpoint.get("epoch") or 0) + (1 if checkpoint.get("step_in_epoch") else 0)
    if config.epochs < done:
        raise ConfigError(f"cannot resume {path} with epochs={config.epochs}: it has already trained "
                          f"{done} epoch(s); give epochs ≥ {done}")
    saved_categories = list(checkpoint.get("categories") or [])
    categories = read_categories(config.root)
    if saved_categories and categories != saved_categories:
        differ = next((i for i, (a, b) in enumerate(zip(saved_categories, categories, strict=False)) if a != b),
                      min(len(saved_categories), len(categories)))
        raise ConfigError(f"cannot resume {path} on {config.root}: its categories differ from the checkpoint's "
                          f"(class {differ}: {_at(categories, differ)} instead of {_at(saved_categories, differ)}); "
                          "resume on the dataset the run was trained on")


def _training_state_problem(checkpoint: dict[str, Any]) -> str | None:
    """What is missing or of the wrong type among the keys only a resume reads (see `TrainState`)."""
    for key in ("optimizer", "scheduler"):
        if not isinstance(checkpoint.get(key), dict):
            return f"key {key!r} must be a mapping, got {type(checkpoint.get(key)).__name__}"
    if not isinstance(checkpoint.get("epoch"), int):
        return "key 'epoch' is missing"
    if not isinstance(checkpoint.get("best_top1"), (int, float)):
        return f"key 'best_top1' must be a number, got {type(checkpoint.get('best_top1')).__name__}"
    rng = checkpoint.get("rng")
    if not isinstance(rng, list) or not rng or not all(isinstance(r, dict) for r in rng):
        return "key 'rng' must be a list of random states, one per process"
    sums = checkpoint.get("epoch_sums")
    if sums is not None and not (isinstance(sums, list) and all(isinstance(v, (int, float)) for v in sums)):
        return "key 'epoch_sums' must be a list of numbers or null"
    return None


def _keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _at(items: list[str], index: int) -> str:
    return repr(items[index]) if index < len(items) else "nothing"


# ---------------------------------------------------------------- the run folder, claimed


@dataclass
class RunClaim:
    """This process's hold on a run folder: an open, exclusively locked `.train.lock` (see `claim_run`)."""

    run: RunDir
    fd: int
    reused: bool  # a folder a previous start left without a checkpoint, started again

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the lock; the file stays (unlinking it would race a claimer)
            self.fd = -1


def claim_run(run: RunDir, *, fresh: bool) -> RunClaim:
    """Take `run`'s folder for this process, before anything is built or written in it.

    The folder is created if needed, then `.train.lock` in it is locked (`flock`, exclusive, not
    waiting): a second process gets `RunBusyError`, whatever the timing, and the kernel drops the
    lock when its holder dies, even by SIGKILL. A `fresh` start then refuses a folder that holds a
    checkpoint (`RunExistsError`: resume it instead), and takes over one that holds none (a start
    killed before its first checkpoint), saying so in the log.
    """
    try:
        run.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            run.path.mkdir()
            created = True
        except FileExistsError:
            if not run.path.is_dir():
                raise RunWriteError(f"cannot create the run directory {run.path}: a file of that name exists; "
                                    "give the run another name") from None
            created = False
        fd = os.open(run.lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunWriteError(f"cannot create the run directory {run.path}: {err.strerror or err}; "
                            "choose a writable out_dir") from err
    if not _lock(fd):
        owner = _owner(fd)
        os.close(fd)
        raise RunBusyError(f"run directory {run.path} is in use by another training (pid {owner}); wait for it "
                           "to end, or give this run another name")
    pid = f"{os.getpid()}\n".encode()
    os.pwrite(fd, pid, 0)
    os.ftruncate(fd, len(pid))
    claim = RunClaim(run, fd, reused=False)
    if fresh and not created:
        # last.pt makes a run (it is what resumes); a best.pt alone is the first epoch's, cut off before
        # last.pt was written, and a restart writes both again.
        if run.last.exists():
            claim.release()
            raise RunExistsError(f"run directory {run.path} already holds a run; resume it, or give the new run "
                                 "another name (config key 'name')", run.path)
        if run.holds_training() or run.config.exists():
            claim.reused = True
            logger.warning("run directory %s holds no checkpoint (a start stopped before its first epoch ended); "
                           "starting it again from scratch", run.path)
    return claim


def _owner(fd: int) -> str:
    """The pid the lock's holder wrote; a holder that has just taken the lock gets a moment to write it."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text:
            return text
        time.sleep(0.005)
    return "unknown"


def _claim_on_main(run: RunDir, info: DistInfo, device: torch.device, *, fresh: bool) -> RunClaim | None:
    """Rank 0 claims the folder; every process learns whether it could, so none waits for a rank that failed."""
    claim, error = None, None
    if info.is_main:
        try:
            claim = claim_run(run, fresh=fresh)
        except MiniPlacesError as err:
            error = err
    if all_reduce_max(float(error is not None), device) > 0:
        if error is not None:
            raise error
        raise MiniPlacesError(f"rank 0 could not claim the run directory {run.path} (see its error)")
    return claim


def _lock(fd: int) -> bool:
    """Lock `fd` exclusively without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the folder's creation is then the only guard
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# ---------------------------------------------------------------- the run, top to bottom


def train(config: TrainConfig, *, resume: Path | str | None = None, on_step: Callable[[int], None] | None = None,
          progress: bool = True) -> Path:
    """Train as `config` says (or continue the run of `resume`, a run dir or checkpoint); return the run dir.

    Raises `TrainingInterrupted` after a SIGINT/SIGTERM (with `last.pt` written), `RunExistsError`
    when a new run's folder already holds one, and `NonFiniteLossError` when the loss stops being
    finite (the last checkpoint is kept).
    """
    config = resolve(config)
    # bf16: the device and `amp: auto` are resolved before the resume check, which then compares the
    # precision chosen here with the checkpoint's; config.yaml and the first log line say why
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")), source="key 'device'")
    amp, amp_note = resolve_amp(config.amp, device)  # bf16
    config = dataclasses.replace(config, amp=amp)  # bf16
    logger.info("precision: amp %s (%s)", amp, amp_note)  # bf16
    checkpoint, run = None, None
    if resume is not None:
        path = checkpoint_of(resume)
        checkpoint, run = load_checkpoint(path), RunDir.of_checkpoint(path)
        check_resume(config, checkpoint, path)
        config = dataclasses.replace(config, out_dir=str(run.path.parent), name=run.name)
    info = init_distributed(device.type)
    claim = None
    try:
        if run is None:
            config, run = _name_run(config, info)
        claim = _claim_on_main(run, info, device, fresh=resume is None)
        parts = _build(config, info, device, checkpoint)
        writer = _open_run(run, parts, info, f"amp: {amp} ({amp_note})")  # bf16: the note heads config.yaml
        try:
            _train_epochs(run, parts, info, writer, on_step, progress)
        finally:
            if writer is not None:
                writer.close()
        return run.path
    finally:
        if claim is not None:
            claim.release()
        cleanup_distributed()


def _name_run(config: TrainConfig, info: DistInfo) -> tuple[TrainConfig, RunDir]:
    """The new run's folder `<out_dir>/<name>` (name: model and start time unless given); `claim_run` takes it."""
    name = config.name or all_gather_objects(f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}", info)[0]
    config = dataclasses.replace(config, name=name)
    return config, RunDir(Path(config.out_dir) / name)


@dataclass
class _Parts:
    """What a run trains with: the state that checkpoints hold, and what is rebuilt from the config."""

    state: TrainState
    train_model: nn.Module  # the DDP-wrapped and/or compiled model the steps run through
    batches: TrainBatches
    val_loader: Any
    criterion: nn.Module
    adversary: Any
    amp_dtype: torch.dtype | None
    mixcut: MixCut | None = None


def _build(config: TrainConfig, info: DistInfo, device: torch.device, checkpoint: dict[str, Any] | None) -> _Parts:
    """Model, data, optimiser, schedule and adversary; then the checkpoint's state, if resuming."""
    dtype = amp_dtype(config.amp, device)
    categories = read_categories(config.root)
    seed_everything(config.seed)
    if checkpoint is not None:
        # Without fetching pretrained weights: the file has the weights (the trained ones, not the EMA's).
        model = build_model(checkpoint, ema=False)
    else:
        from miniplaces.models import create_model

        kwargs = dict(config.model_kwargs)
        kwargs.setdefault("num_classes", len(categories))
        model = create_model(config.model, image_size=config.image_size, **kwargs)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    batches = build_train_batches(config, info, device)
    if config.data_init and checkpoint is None:
        # Before DDP wraps the model: DDP then gives every process rank 0's weights.
        model.init_from_data(first_images(batches, DATA_INIT_IMAGES))  # type: ignore[operator]
    ddp_model = wrap_model(model, info, device, sync_bn=config.sync_bn)
    train_model = torch.compile(ddp_model) if config.compile else ddp_model

    val_loader = build_val_batches(config.root, config, info, device)
    optimizer = build_optimizer(model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                momentum=config.momentum, no_wd_norm_bias=config.no_wd_norm_bias)
    steps = batches.steps_per_epoch
    scheduler = warmup_cosine(optimizer, total_steps=config.epochs * steps,
                              warmup_steps=round(config.warmup_epochs * steps), min_lr=config.min_lr)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    # The EMA starts as a copy of the initial weights; a checkpoint's EMA replaces it below.
    ema = ModelEma(model, config.ema_decay, warmup=config.ema_warmup) if config.ema else None
    state = TrainState(model, optimizer, scheduler, scaler, config, categories, info, device, ema=ema)
    if checkpoint is not None:
        try:
            state.load_state_dict(checkpoint)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
            # `check_resume` checked the keys' types; what is left is a state that does not fit (another optimiser).
            raise CheckpointError(f"the checkpoint's training state does not fit this run "
                                  f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                                  "resume from another checkpoint") from err
    else:
        # The model's initial weights are the same on every process; its random layers (dropout) should not be.
        seed_everything(config.seed + info.rank)

    adversary = make_adversary(adversarial_spec(config))
    # With MixUp/CutMix the targets are probabilities; the loss smooths them as it smooths labels.
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    mixcut = None
    if config.mixup_alpha > 0 or config.cutmix_alpha > 0:
        mixcut = MixCut(len(categories), mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
                        prob=config.mix_prob, switch_prob=config.mix_switch_prob)
    return _Parts(state, train_model, batches, val_loader, criterion, adversary, dtype, mixcut)


def _open_run(run: RunDir, parts: _Parts, info: DistInfo, note: str | None = None) -> Any:  # bf16: note
    """Write the config, drop metrics rows past the checkpoint, open TensorBoard; the writer (rank 0) or None."""
    writer = None
    if info.is_main:
        epoch = parts.state.epoch
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        # Temporary files of writes a killed process left (best.pt's would otherwise wait for a better epoch).
        for target in (run.last, run.best, run.metrics, run.config):
            remove_stale_tmp(target)
        save_config(parts.state.config, run.config, note)  # bf16: note
        # A crash between writing a row and its checkpoint leaves a row the resumed run repeats.
        kept = [row for row in read_metrics(run.metrics) if row.epoch <= epoch]
        write_metrics(run.metrics, kept)
        write_metrics_csv(run.metrics_csv, kept)
        writer = _tensorboard(run.tensorboard, purge_step=epoch + 1)
    barrier(info)
    config = parts.state.config
    logger.info("run %s: %s on %s%s, %d epochs × %d steps of %d images%s", run.path, config.model,
                parts.state.device, f" × {info.world_size} processes" if info.enabled else "", config.epochs,
                parts.batches.steps_per_epoch, config.batch_size, _adversarial_note(config))
    return writer


def _train_epochs(run: RunDir, parts: _Parts, info: DistInfo, writer: Any, on_step: Callable[[int], None] | None,
                  progress: bool) -> None:
    """The epochs left; each ends with a metrics row, `last.pt` and maybe `best.pt`. Signals stop it cleanly."""
    state, config = parts.state, parts.state.config
    rows = read_metrics(run.metrics) if info.is_main else []
    steps = parts.batches.steps_per_epoch
    resumed_at = state.epoch * steps + state.step_in_epoch  # global steps already done

    with _stop_on_signals() as should_stop, _step_writer(run, writer is not None, resumed_at) as step_writer:

        def on_log(step: int, values: dict[str, float]) -> None:
            # Per-step scalars at the global step; this process's own window (rank 0's, the one that writes).
            for key, value in values.items():
                step_writer.add_scalar(f"step/{key}", value, state.epoch * steps + step)

        while state.epoch < config.epochs:
            row = _train_epoch(run, parts, info, on_step, progress and info.is_main, should_stop,
                               on_log if step_writer is not None else None)
            # best.pt holds the weights that a checkpoint is used with: the EMA's when the run keeps one.
            # An epoch whose val loss is NaN or inf has diverged: its weights are never the best.
            score, loss = ((row.val_top1_ema, row.val_loss_ema) if row.val_top1_ema is not None
                           else (row.val_top1, row.val_loss))
            improved = loss is not None and math.isfinite(loss) and score > state.best_top1
            if improved:
                state.best_top1 = score
            state.epoch, state.step_in_epoch, state.epoch_sums = row.epoch, 0, None
            payload = state.state_dict(metrics=row.to_dict())
            if info.is_main:
                rows.append(row)
                write_metrics(run.metrics, rows)
                write_metrics_csv(run.metrics_csv, rows)
                _log_scalars(writer, row)
                if step_writer is not None:
                    step_writer.flush()
                # best.pt first: a kill between the two leaves last.pt at the previous epoch, whose resume
                # redoes this epoch exactly and writes both again; the other order could lose a best epoch.
                if improved:
                    save_checkpoint(payload, run.best)
                save_checkpoint(payload, run.last)
            barrier(info)
            logger.info(
                "epoch %d/%d  train loss %.4f top1 %.2f  val loss %.4f top1 %.2f top5 %.2f  lr %.3g  "
                "%.1f s  %.0f img/s  %.0f MB%s%s",
                row.epoch, config.epochs, row.train_loss, row.train_top1, row.val_loss, row.val_top1, row.val_top5,
                row.lr, row.epoch_time_s, row.images_per_s, row.peak_memory_mb,
                "" if row.val_top1_ema is None else f"  EMA val top1 {row.val_top1_ema:.2f}",
                "  (best)" if improved else "",
            )
            # A signal during validation or checkpointing stops here, at the epoch boundary.
            if state.epoch < config.epochs and all_reduce_max(float(should_stop()), state.device) > 0:
                raise TrainingInterrupted(
                    f"interrupted after epoch {state.epoch}; {run.last} written. "
                    f"Resume with: miniplaces train --resume {run.path}", run.path)


def _train_epoch(run: RunDir, parts: _Parts, info: DistInfo, on_step: Callable[[int], None] | None,
                 progress: bool, should_stop: Callable[[], bool],
                 on_log: Callable[[int, dict[str, float]], None] | None = None) -> MetricsRow:
    """One epoch from `state.step_in_epoch` on, then validation; on a stop signal, `last.pt` and
    `TrainingInterrupted`."""
    state, config = parts.state, parts.state.config
    device, epoch, start_step = state.device, state.epoch, state.step_in_epoch
    steps = parts.batches.steps_per_epoch
    sums = RunningSums(device)
    if state.epoch_sums is not None:
        sums.load_state(state.epoch_sums)
    reset_peak_memory(device)
    t0 = time.perf_counter()
    tr = train_one_epoch(
        parts.train_model, parts.batches.position(epoch, start_step, train_size(config, epoch)),  # bf16: side
        state.optimizer, state.scheduler,
        device=device, criterion=parts.criterion, epoch=epoch, steps=steps, start_step=start_step, sums=sums,
        scaler=state.scaler, amp_dtype=parts.amp_dtype, clip_grad=config.clip_grad,
        channels_last=config.channels_last, adversary=parts.adversary, ema=state.ema,
        batch_transform=_batch_transform(config, parts.mixcut, epoch, info.rank), should_stop=should_stop,
        on_step=on_step, on_log=on_log, check_every=config.log_every, progress=progress,
    )
    if not tr["completed"]:
        reduced = RunningSums(device)
        reduced.load_state(tr["sums"])
        state.step_in_epoch, state.epoch_sums = tr["steps"], reduced.all_reduce().state()
        payload = state.state_dict()
        if info.is_main:
            save_checkpoint(payload, run.last)
        barrier(info)
        raise TrainingInterrupted(
            f"interrupted in epoch {epoch + 1} after step {tr['steps']}/{steps}; {run.last} written. "
            f"Resume with: miniplaces train --resume {run.path}", run.path)
    val = evaluate(parts.train_model, parts.val_loader, device=device, tta=config.tta, amp_dtype=parts.amp_dtype,
                   channels_last=config.channels_last, steps=config.limit_val_batches, progress=progress)
    ema_val: dict[str, Any] = {}
    if state.ema is not None:
        ema_val = evaluate(state.ema.module, parts.val_loader, device=device, tta=config.tta,
                           amp_dtype=parts.amp_dtype, channels_last=config.channels_last,
                           steps=config.limit_val_batches, progress=progress)
    memory_mb, memory_kind = peak_memory(device)
    return MetricsRow(
        epoch=epoch + 1, train_loss=tr["loss"], train_top1=tr["top1"], train_top5=tr["top5"],
        val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"], lr=tr["lr"],
        epoch_time_s=time.perf_counter() - t0, images_per_s=tr["images"] / max(tr["time_s"], 1e-9),
        peak_memory_mb=memory_mb, peak_memory_kind=memory_kind,
        val_loss_ema=ema_val.get("loss"), val_top1_ema=ema_val.get("top1"), val_top5_ema=ema_val.get("top5"),
    )


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
    if mixcut is None:  # bf16: no resize_batch here any more
        return None

    def transform(x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return mixcut(x, y, batch_rng(config.seed, epoch, step, rank, 3))

    return transform


# ---------------------------------------------------------------- signals, logging


@contextmanager
def _stop_on_signals() -> Iterator[Callable[[], bool]]:
    """SIGINT/SIGTERM set a flag the loop polls after each step; a second one aborts at once."""
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


@contextmanager
def _step_writer(run: RunDir, enabled: bool, resumed_at: int) -> Iterator[Any]:
    """The writer of the per-step scalars (rank 0), or None. Its own event folder (`tb/steps`): a resumed
    run purges the events past its checkpoint by step, where the per-epoch writer purges by epoch."""
    if not enabled:
        yield None
        return
    writer = _tensorboard(run.tensorboard_steps, purge_step=resumed_at + 1)
    try:
        yield writer
    finally:
        writer.close()


def _adversarial_note(config: TrainConfig) -> str:
    spec = adversarial_spec(config)
    return "" if spec is None else f", adversarial training: {spec.describe()}"


def _tensorboard(path: Path, purge_step: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path), purge_step=purge_step)


def _log_scalars(writer: Any, row: MetricsRow) -> None:
    if writer is None:
        return
    for split in ("train", "val"):
        for key in ("loss", "top1", "top5"):
            writer.add_scalar(f"{split}/{key}", getattr(row, f"{split}_{key}"), row.epoch)
            if split == "val" and row.val_top1_ema is not None:
                writer.add_scalar(f"val_ema/{key}", getattr(row, f"val_{key}_ema"), row.epoch)
    for key in ("lr", "epoch_time_s", "images_per_s", "peak_memory_mb"):
        writer.add_scalar(f"perf/{key}" if key != "lr" else "lr", getattr(row, key), row.epoch)
    writer.flush()
