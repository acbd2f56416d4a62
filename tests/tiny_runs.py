"""The tiny training runs the engine and feature tests share: their dataset, config and metrics readers."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

from miniplaces.config import TrainConfig
from miniplaces.data.synth import synthesize

TIMING_KEYS = {"epoch_time_s", "images_per_s", "peak_memory_mb"}


def tiny_dataset(folder: Path) -> Path:
    """4 classes × 24 train, 8 val, 32×32: enough for SimpleNet to learn them in a few epochs."""
    return synthesize(folder, classes=4, per_class=24, val_per_class=8, image_size=32, seed=1)


def config(root: Path, out: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(root=str(root), out_dir=str(out), name="run", epochs=2, batch_size=16, lr=0.05,
                       warmup_epochs=1, workers=0, image_size=32, device="cpu", log_every=2, limit_train_batches=3)
    return dataclasses.replace(base, **changes)


def interrupt_at_step(n: int) -> Callable[[int], None]:
    """A step callback that sends this process SIGINT (Ctrl-C) on its `n`-th call: a run stopped mid-training,
    as a user stops one, which the engine turns into `TrainingInterrupted` after saving its last checkpoint."""
    calls = {"n": 0}

    def on_step(step: int) -> None:
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGINT)

    return on_step


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in metrics]
