"""`train(config)`: the epoch loop around `train_one_epoch` / `evaluate`, with exact resume.

A run directory holds `config.yaml`, `metrics.jsonl` (one JSON object per epoch),
`checkpoints/last.pt` (every epoch, and on Ctrl-C mid-epoch), `checkpoints/best.pt`
(best val top-1) and `tb/` (TensorBoard scalars). Only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from miniplaces.attacks.training import make_adversary
from miniplaces.config import (
    ConfigError,
    TrainConfig,
    adversarial_budget,
    config_from_dict,
    resolve,
    save_config,
    to_dict,
)
from miniplaces.data import read_categories
from miniplaces.engine.checkpoint import (
    CheckpointError,
    build_model,
    describe_model,
    load_checkpoint,
    run_dir,
    save_checkpoint,
)
from miniplaces.engine.device import resolve_device
from miniplaces.engine.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_max,
    barrier,
    cleanup_distributed,
    init_distributed,
    wrap_model,
)
from miniplaces.engine.loaders import build_train_batches, build_val_batches
from miniplaces.engine.metrics import RunningSums, peak_memory, reset_peak_memory
from miniplaces.engine.optim import build_optimizer
from miniplaces.engine.schedule import warmup_cosine
from miniplaces.engine.train import evaluate, train_one_epoch
from miniplaces.errors import MiniPlacesError

logger = logging.getLogger(__name__)

METRIC_KEYS = ("epoch", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5", "lr",
               "epoch_time_s", "images_per_s", "peak_memory_mb", "peak_memory_kind")


class TrainingInterrupted(MiniPlacesError):
    """SIGINT / SIGTERM stopped a run after writing `last.pt`; the message says how to resume."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir


# ---------------------------------------------------------------- precision, RNG


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"key 'amp' is fp16, which needs a CUDA device (this run uses {device.type}); use bf16")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG states of torch (CPU and CUDA), numpy and random, as tensors and numbers (weights_only-safe)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ---------------------------------------------------------------- run directory, resume


def checkpoint_of(run_or_checkpoint: Path | str) -> Path:
    """`runs/<name>` → `runs/<name>/checkpoints/last.pt`; a file stays itself."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    return path


def resume_config(run_or_checkpoint: Path | str) -> TrainConfig:
    """The config a checkpoint was trained with (flags given with --resume are applied on top)."""
    path = checkpoint_of(run_or_checkpoint)
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.get("config"), dict):
        raise CheckpointError(f"{path} holds no training config, so it cannot be resumed")
    return config_from_dict(checkpoint["config"], where=f"{path} (config)")


def _default_name(config: TrainConfig) -> str:
    return f"{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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


# ---------------------------------------------------------------- training


def train(config: TrainConfig, *, resume: Path | str | None = None, on_step: Callable[[int], None] | None = None,
          progress: bool = True) -> Path:
    """Train as `config` says (or continue the run of `resume`, a run dir or checkpoint); return the run dir.

    Raises `TrainingInterrupted` after a SIGINT/SIGTERM (with `last.pt` written) and
    `NonFiniteLossError` when the loss stops being finite (the last checkpoint is kept).
    """
    config = resolve(config)
    checkpoint = None
    if resume is not None:
        ckpt_path = checkpoint_of(resume)
        checkpoint = load_checkpoint(ckpt_path)
    device = resolve_device(config.device, _local_rank(), source="key 'device'")
    info = init_distributed(device.type)
    try:
        return _train(config, info, device, checkpoint, None if resume is None else run_dir(ckpt_path),
                      on_step, progress)
    finally:
        cleanup_distributed()


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def _train(config: TrainConfig, info: DistInfo, device: torch.device, checkpoint: dict[str, Any] | None,
           run_dir: Path | None, on_step: Callable[[int], None] | None, progress: bool) -> Path:
    dtype = amp_dtype(config.amp, device)
    if run_dir is None:
        name = config.name or all_gather_objects(_default_name(config), info)[0]
        config = dataclasses.replace(config, name=name)
        run_dir = Path(config.out_dir) / name
        if info.is_main and ((run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()):
            raise MiniPlacesError(f"run directory {run_dir} already holds a run; continue it with "
                                  f"`miniplaces train --resume {run_dir}` or choose another --name")
    categories = read_categories(config.root)

    seed_everything(config.seed)
    if checkpoint is not None:
        model = build_model(checkpoint)  # without fetching pretrained weights: the file has the weights
    else:
        from miniplaces.models import create_model

        kwargs = dict(config.model_kwargs)
        kwargs.setdefault("num_classes", len(categories))
        model = create_model(config.model, **kwargs)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    ddp_model = wrap_model(model, info, device, sync_bn=config.sync_bn)
    unwrapped: nn.Module = ddp_model.module if info.enabled else ddp_model
    train_model = torch.compile(ddp_model) if config.compile else ddp_model

    batches = build_train_batches(config, info, device)
    val_loader = build_val_batches(config.root, config, info, device)
    steps_per_epoch = batches.steps_per_epoch
    optimizer = build_optimizer(unwrapped, config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                momentum=config.momentum, no_wd_norm_bias=config.no_wd_norm_bias)
    scheduler = warmup_cosine(optimizer, total_steps=config.epochs * steps_per_epoch,
                              warmup_steps=round(config.warmup_epochs * steps_per_epoch), min_lr=config.min_lr)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    eps, step_size = adversarial_budget(config)
    adversary = make_adversary(config.adv_train, eps=eps, steps=config.adv_steps, step_size=step_size,
                               mode=config.adv_mode)

    start_epoch, start_step, best_top1, epoch_sums = 0, 0, -math.inf, None
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        # Keep this config's schedule (epochs may have been extended); the step count comes from the file.
        sched_state = dict(checkpoint["scheduler"])
        sched_state["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
        scheduler.load_state_dict(sched_state)
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, start_step = int(checkpoint["epoch"]), int(checkpoint.get("step_in_epoch", 0))
        best_top1 = float(checkpoint["best_top1"])
        epoch_sums = checkpoint.get("epoch_sums") if info.is_main else None
        states = checkpoint["rng"]
        set_rng_state(states[info.rank] if len(states) == info.world_size else states[0], device)
    else:
        # The model's initial weights are the same on every process; its random layers (dropout) should not be.
        seed_everything(config.seed + info.rank)

    metrics_path = run_dir / "metrics.jsonl"
    writer = None
    if info.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        # A crash between writing a row and its checkpoint leaves a row the resumed run repeats.
        rows = [r for r in _read_metrics(metrics_path) if r["epoch"] <= start_epoch]
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        writer = _tensorboard(run_dir / "tb", purge_step=start_epoch + 1)
    barrier(info)

    def payload(epoch: int, step_in_epoch: int, sums: list[float] | None, metrics: dict[str, Any] | None) -> dict:
        return {
            "model": describe_model(unwrapped),
            "state_dict": unwrapped.state_dict(),
            "categories": categories,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "epoch_sums": sums,
            "step": scheduler.last_epoch,
            "best_top1": best_top1,
            "rng": all_gather_objects(rng_state(device), info),
            "config": to_dict(config),
            "metrics": metrics,
        }

    logger.info("run %s: %s on %s%s, %d epochs × %d steps of %d images%s", run_dir, config.model, device,
                f" × {info.world_size} processes" if info.enabled else "", config.epochs, steps_per_epoch,
                config.batch_size, _adversarial_note(config))
    with _stop_on_signals() as should_stop:
        for epoch in range(start_epoch, config.epochs):
            first = epoch == start_epoch
            sums = RunningSums(device)
            if first and epoch_sums is not None:
                sums.load_state(epoch_sums)
            reset_peak_memory(device)
            t0 = time.perf_counter()
            tr = train_one_epoch(
                train_model, batches.position(epoch, start_step if first else 0), optimizer, scheduler,
                device=device, criterion=criterion, epoch=epoch, steps=steps_per_epoch,
                start_step=start_step if first else 0, sums=sums, scaler=scaler, amp_dtype=dtype,
                clip_grad=config.clip_grad, channels_last=config.channels_last, adversary=adversary,
                should_stop=should_stop,
                on_step=on_step, check_every=config.log_every, progress=progress and info.is_main,
            )
            if not tr["completed"]:
                reduced = RunningSums(device)
                reduced.load_state(tr["sums"])
                state = payload(epoch, tr["steps"], reduced.all_reduce().state(), None)
                if info.is_main:
                    save_checkpoint(state, run_dir / "checkpoints" / "last.pt")
                barrier(info)
                raise TrainingInterrupted(
                    f"interrupted in epoch {epoch + 1} after step {tr['steps']}/{steps_per_epoch}; "
                    f"{run_dir / 'checkpoints' / 'last.pt'} written. Resume with: "
                    f"miniplaces train --resume {run_dir}", run_dir)
            train_time = tr["time_s"]
            val = evaluate(train_model, val_loader, device=device, tta=config.tta, amp_dtype=dtype,
                           channels_last=config.channels_last, steps=config.limit_val_batches,
                           progress=progress and info.is_main)
            memory_mb, memory_kind = peak_memory(device)
            row = {
                "epoch": epoch + 1,
                "train_loss": tr["loss"], "train_top1": tr["top1"], "train_top5": tr["top5"],
                "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                "lr": tr["lr"],
                "epoch_time_s": time.perf_counter() - t0,
                "images_per_s": tr["images"] / max(train_time, 1e-9),
                "peak_memory_mb": memory_mb, "peak_memory_kind": memory_kind,
            }
            improved = val["top1"] > best_top1
            best_top1 = max(best_top1, val["top1"])
            state = payload(epoch + 1, 0, None, row)
            if info.is_main:
                with metrics_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                _log_scalars(writer, row)
                save_checkpoint(state, run_dir / "checkpoints" / "last.pt")
                if improved:
                    save_checkpoint(state, run_dir / "checkpoints" / "best.pt")
            barrier(info)
            logger.info(
                "epoch %d/%d  train loss %.4f top1 %.2f  val loss %.4f top1 %.2f top5 %.2f  lr %.3g  "
                "%.1f s  %.0f img/s  %.0f MB%s",
                epoch + 1, config.epochs, row["train_loss"], row["train_top1"], row["val_loss"], row["val_top1"],
                row["val_top5"], row["lr"], row["epoch_time_s"], row["images_per_s"], memory_mb,
                "  (best)" if improved else "",
            )
            # A signal during validation or checkpointing stops here, at the epoch boundary.
            if epoch + 1 < config.epochs and all_reduce_max(float(should_stop()), device) > 0:
                raise TrainingInterrupted(
                    f"interrupted after epoch {epoch + 1}; {run_dir / 'checkpoints' / 'last.pt'} written. "
                    f"Resume with: miniplaces train --resume {run_dir}", run_dir)
    if writer is not None:
        writer.close()
    return run_dir


def _adversarial_note(config: TrainConfig) -> str:
    if config.adv_train == "none":
        return ""
    if config.adv_train == "fgsm":
        return f", adversarial training: FGSM ε = {config.adv_eps}"
    step = config.adv_step_size if config.adv_step_size is not None else "ε/10"
    return (f", adversarial training: {config.adv_mode} PGD ε = {config.adv_eps}, "
            f"{config.adv_steps} steps of {step}")


def _tensorboard(path: Path, purge_step: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path), purge_step=purge_step)


def _log_scalars(writer: Any, row: dict[str, Any]) -> None:
    if writer is None:
        return
    step = row["epoch"]
    for split in ("train", "val"):
        for key in ("loss", "top1", "top5"):
            writer.add_scalar(f"{split}/{key}", row[f"{split}_{key}"], step)
    for key in ("lr", "epoch_time_s", "images_per_s", "peak_memory_mb"):
        writer.add_scalar(f"perf/{key}" if key != "lr" else "lr", row[key], step)
    writer.flush()


# ---------------------------------------------------------------- evaluation of a checkpoint


def evaluate_checkpoint(path: Path | str, root: Path | str, split: str = "val", tta: str | None = None,
                        out: Path | str | None = None, batch_size: int = 256, device: str = "auto",
                        workers: int = 4, progress: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint on a labelled split; write the result as JSON and return it.

    The JSON goes to `<checkpoint dir>/eval_<split>.json` or `out`, and holds top1, top5,
    loss, per-class accuracy and the confusion matrix (rows true class, columns predicted).
    """
    path = Path(path)
    checkpoint = load_checkpoint(path)
    try:
        model = build_model(checkpoint)
    except MiniPlacesError as err:
        raise err if isinstance(err, CheckpointError) else CheckpointError(f"{path}: {err}") from err
    if split not in ("train", "val"):
        raise MiniPlacesError(f"split {split!r} has no labels to evaluate against; use val or train")
    categories = read_categories(root)
    saved = list(checkpoint.get("categories") or [])
    if saved and saved != categories:
        raise MiniPlacesError(f"{root} has {len(categories)} categories that differ from the {len(saved)} "
                              f"{path} was trained on; evaluate on the dataset it was trained with")
    run_config = config_from_dict(checkpoint["config"]) if isinstance(checkpoint.get("config"), dict) else None
    config = dataclasses.replace(run_config or TrainConfig(), root=str(root), workers=workers, loader="dataloader")
    torch_device = resolve_device(device)
    model.to(torch_device)
    loader = build_val_batches(str(root), config, DistInfo(), torch_device, split=split, batch_size=batch_size)
    result = evaluate(model, loader, device=torch_device, tta=tta, num_classes=len(categories), progress=progress)
    confusion = result.pop("confusion")
    counts = confusion.sum(dim=1)
    per_class = (100.0 * confusion.diag() / counts.clamp(min=1)).tolist()
    report = {
        "checkpoint": str(path),
        "model": checkpoint["model"],
        "epoch": checkpoint.get("epoch"),
        "split": split,
        "tta": tta,
        "image_size": config.image_size,
        "count": result["count"],
        "top1": result["top1"],
        "top5": result["top5"],
        "loss": result["loss"],
        "per_class": [{"class": name, "accuracy": acc, "count": int(n)}
                      for name, acc, n in zip(categories, per_class, counts.tolist(), strict=True)],
        "confusion": confusion.tolist(),
    }
    target = Path(out) if out is not None else path.parent / f"eval_{split}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(target)
    report["path"] = str(target)
    return report
