"""Linear warm-up then cosine decay, stepped once per iteration."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine:
    """The factor on the base learning rate at iteration `step` (0-based).

    Warm-up rises linearly to 1 over `warmup_steps` (the first step already trains at
    1/warmup_steps of the rate), then a half cosine falls to `min_factor` at `total_steps`.
    A callable object rather than a closure so the scheduler's state dict keeps its numbers.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_factor: float = 0.0) -> None:
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(warmup_steps, total_steps))
        self.min_factor = float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, *, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> LambdaLR:
    """A `LambdaLR` for `optimizer` (whose groups' `lr` is the peak rate); call `.step()` after each iteration."""
    base_lr = optimizer.param_groups[0]["lr"]
    min_factor = min_lr / base_lr if base_lr > 0 else 0.0
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, min_factor))
