"""`TrainState`: everything a checkpoint holds to continue a run exactly, saved and restored symmetrically.

`state_dict()` gives the checkpoint payload (see `miniplaces.engine.checkpoint` for its
frame); `load_state_dict()` takes it back. Together they cover the model, optimiser,
scheduler, grad scaler, epoch, step within the epoch and its running sums, best val top-1,
every process's RNG states, the config the run was trained with, and the EMA of the weights
(`ema`: its weights and update count) when the run keeps one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from miniplaces.config import TrainConfig, to_dict
from miniplaces.engine.checkpoint import describe_model
from miniplaces.engine.distributed import DistInfo, all_gather_objects
from miniplaces.engine.ema import ModelEma
from miniplaces.engine.metrics import RunningSums
from miniplaces.records import MetricsRow


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


@dataclass
class TrainState:
    """A run's training state. `epoch` counts finished epochs; `step_in_epoch` > 0 means stopped mid-epoch,
    with that epoch's running sums in `epoch_sums`.

    `model` is the unwrapped model (not DDP, not compiled), so its weights load anywhere. `best_top1`
    is the EMA's best val top-1 when the run keeps an `ema` (the weights best.pt is used with).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    config: TrainConfig
    categories: list[str]
    info: DistInfo
    device: torch.device
    epoch: int = 0
    step_in_epoch: int = 0
    epoch_sums: list[float] | None = None
    best_top1: float = -math.inf
    ema: ModelEma | None = None

    def finish_epoch(self, row: MetricsRow) -> bool:
        """Move to the end of the epoch of `row`; whether its val top-1 is the run's best so far.

        The score is the EMA's when the run keeps one (the weights best.pt is used with). An epoch whose
        val loss is NaN or inf has diverged: its weights are never the best.
        """
        score, loss = ((row.val_top1_ema, row.val_loss_ema) if row.val_top1_ema is not None
                       else (row.val_top1, row.val_loss))
        improved = loss is not None and math.isfinite(loss) and score > self.best_top1
        if improved:
            self.best_top1 = score
        self.epoch, self.step_in_epoch, self.epoch_sums = row.epoch, 0, None
        return improved

    def running_sums(self) -> RunningSums:
        """The sums the current epoch continues from: those of its steps done before a stop, else zeros."""
        sums = RunningSums(self.device)
        if self.epoch_sums is not None:
            sums.load_state(self.epoch_sums)
        return sums

    def pause(self, steps: int, sums: list[float]) -> None:
        """Stop mid-epoch after its first `steps` steps, this process's running `sums` all-reduced (a collective)."""
        reduced = RunningSums(self.device)
        reduced.load_state(sums)
        self.step_in_epoch, self.epoch_sums = steps, reduced.all_reduce().state()

    def state_dict(self, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        """The checkpoint payload. A collective under DDP (it gathers every process's RNG state)."""
        return {
            "model": describe_model(self.model),
            "state_dict": self.model.state_dict(),
            "categories": self.categories,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "epoch_sums": self.epoch_sums,
            "step": self.scheduler.last_epoch,
            "best_top1": self.best_top1,
            "rng": all_gather_objects(rng_state(self.device), self.info),
            "config": to_dict(self.config),
            "metrics": metrics,
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Continue from `payload`. This state's config stays: settings given at resume apply on top,
        and the schedule follows this config's epochs (which may have been extended)."""
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        # Keep this config's schedule (its lambdas); the step count comes from the file.
        scheduler = dict(payload["scheduler"])
        scheduler["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)
        self.scheduler.load_state_dict(scheduler)
        if self.scaler is not None and payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self.epoch, self.step_in_epoch = int(payload["epoch"]), int(payload.get("step_in_epoch", 0))
        self.best_top1 = float(payload["best_top1"])
        # Only rank 0's sums are saved (they are all-reduced first); the others start from zero.
        self.epoch_sums = payload.get("epoch_sums") if self.info.is_main else None
        if self.ema is not None:
            if payload.get("ema"):
                self.ema.load_state_dict(payload["ema"])
            else:  # EMA turned on at resume: the average starts from the checkpoint's weights
                self.ema.set(self.model)
        states = payload["rng"]
        set_rng_state(states[self.info.rank] if len(states) == self.info.world_size else states[0], self.device)
