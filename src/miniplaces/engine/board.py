"""`RunBoard`: a run's TensorBoard events, per epoch in `tb/` and per step in `tb/steps/`.

The two have their own event folders because a resumed run purges the events past its checkpoint
by epoch in one and by global step in the other.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from miniplaces.records import MetricsRow
from miniplaces.rundir import RunDir


def _writer(path: Path, purge_step: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path), purge_step=purge_step)


class RunBoard:
    """The writers of run `run`, continuing after `epoch` finished epochs and `global_step` steps."""

    def __init__(self, run: RunDir, *, epoch: int, global_step: int) -> None:
        self.epochs = _writer(run.tensorboard, purge_step=epoch + 1)
        self.steps = _writer(run.tensorboard_steps, purge_step=global_step + 1)

    def log_step(self, global_step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.steps.add_scalar(f"step/{key}", value, global_step)

    def log_epoch(self, row: MetricsRow) -> None:
        for split in ("train", "val"):
            for key in ("loss", "top1", "top5"):
                self.epochs.add_scalar(f"{split}/{key}", getattr(row, f"{split}_{key}"), row.epoch)
                if split == "val" and row.val_top1_ema is not None:
                    self.epochs.add_scalar(f"val_ema/{key}", getattr(row, f"val_{key}_ema"), row.epoch)
        for key in ("lr", "epoch_time_s", "images_per_s", "peak_memory_mb"):
            self.epochs.add_scalar(f"perf/{key}" if key != "lr" else "lr", getattr(row, key), row.epoch)
        self.epochs.flush()
        self.steps.flush()

    def close(self) -> None:
        self.epochs.close()
        self.steps.close()

    def __enter__(self) -> RunBoard:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
