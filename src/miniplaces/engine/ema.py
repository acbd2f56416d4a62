"""An exponential moving average of a model's weights, after timm's `ModelEmaV3`.

After every optimiser step `update(model)` moves each floating-point tensor of the EMA copy
towards the model's: `ema ← decay · ema + (1 − decay) · model`, for parameters and floating
buffers alike (BatchNorm's running statistics are averaged as well); integer buffers
(`num_batches_tracked`) are copied. With `warmup` the decay starts at 0 and rises as
`1 − (1 + n)^(−2/3)` after n updates until it reaches `decay` (timm's warm-up with
gamma 1, power 2/3), so an early EMA is not dominated by the random initial weights.

The copy is kept in float32 on the model's device, in eval mode, and never receives gradients.
Its `state_dict()` holds the weights and the update count, so a resumed run continues it exactly.
Under DDP the EMA follows the unwrapped module (whose parameters are the same on every process).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

WARMUP_POWER = 2 / 3  # timm's suggestion for short runs (3/4 for runs of hundreds of epochs)


class ModelEma:
    """The EMA of `model`'s weights; `module` is the averaged model to evaluate.

    Args:
        model: the plain module (not DDP or compiled); the EMA starts as a float32 copy of it.
        decay: the decay once warmed up, in [0, 1).
        warmup: ramp the decay up from 0 (timm's `use_warmup`).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, *, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.module = copy.deepcopy(model).float().eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, 1.0 - (1.0 + self.updates) ** -WARMUP_POWER)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the EMA towards `model` (the plain module); call after each optimiser step."""
        weight = 1.0 - self.current_decay()
        mine, theirs = [], []
        for ema_v, model_v in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_v.is_floating_point():
                mine.append(ema_v)
                theirs.append(model_v.detach().to(ema_v.dtype))
            else:
                ema_v.copy_(model_v)
        if mine:
            torch._foreach_lerp_(mine, theirs, weight)
        self.updates += 1

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Restart the average at `model`'s weights (a run that turns EMA on when resumed)."""
        for ema_v, model_v in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            ema_v.copy_(model_v)
        self.updates = 0

    def state_dict(self) -> dict[str, Any]:
        return {"state_dict": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])
