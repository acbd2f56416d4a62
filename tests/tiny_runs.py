"""The tiny training runs the engine and feature tests share: their dataset, config, metrics and checkpoint
readers, and a Ctrl-C at a chosen step."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import torch

from miniplaces.config import TrainConfig
from miniplaces.data.synth import synthesize
from miniplaces.engine.checkpoint import load_checkpoint

TIMING_KEYS = {"epoch_time_s", "images_per_s", "peak_memory_mb"}


def tiny_dataset(folder: Path) -> Path:
    """4 classes × 24 train, 8 val, 32×32: enough for SimpleNet to learn them in a few epochs."""
    return synthesize(folder, classes=4, per_class=24, val_per_class=8, image_size=32, seed=1)


def config(root: Path, out: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(root=str(root), out_dir=str(out), name="run", epochs=2, batch_size=16, lr=0.05,
                       warmup_epochs=1, workers=0, image_size=32, device="cpu", log_every=2, limit_train_batches=3)
    return dataclasses.replace(base, **changes)


def interrupt_at_step(n: int) -> Callable[[int], None]:
    """An `on_step` callback that sends this process SIGINT (Ctrl-C) at the end of the `n`-th step it hears of,
    counted across epochs (the engine passes the step within the epoch): a run stopped as a user stops one,
    which the engine turns into `TrainingInterrupted` after saving its checkpoint."""
    calls = 0

    def on_step(step: int) -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            os.kill(os.getpid(), signal.SIGINT)

    return on_step


def assert_same_state(a: Path, b: Path) -> None:
    """Same trained weights and, when kept, the same EMA (weights and update count)."""
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["state_dict"].keys() == cb["state_dict"].keys()
    for key in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][key], cb["state_dict"][key]), key
    assert (ca["ema"] is None) == (cb["ema"] is None)
    if ca["ema"] is not None:
        assert ca["ema"]["updates"] == cb["ema"]["updates"]
        for key, value in ca["ema"]["state_dict"].items():
            assert torch.equal(value, cb["ema"]["state_dict"][key]), key


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in metrics]
