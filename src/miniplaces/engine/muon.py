"""Muon for convolution filters and SGD for the rest, in one optimiser (airbench's CIFAR-10 recipe).

Muon (Keller Jordan, 2024) replaces each filter bank's momentum by the nearest semi-orthogonal matrix,
computed with a Newton–Schulz iteration: every direction of the update moves by about the same amount, which
lets a short schedule take larger useful steps. `torch.optim.Muon` does the same for 2-D weights only; here
a convolution's (out, in, k, k) filters are flattened to (out, in·k·k), as airbench does. As in airbench, each
bank is rescaled to norm √out before its step: the BatchNorm after a convolution makes its scale irrelevant,
and a fixed norm makes the learning rate the step's size relative to the weights (no weight decay needed).
Everything else (norm scales, biases, linear layers and the head) takes SGD with momentum.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from miniplaces.engine.device import fast_bf16

# The quintic iteration's coefficients (Keller Jordan's, as torch.optim.Muon's defaults) and step count.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalize(matrix: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An approximation of U·Vᵀ for `matrix` = U·S·Vᵀ (2-D), computed in `dtype`, returned in the input's.

    Singular values land in about [0.7, 1.2], not exactly 1: the coefficients trade precision for speed, which
    Muon's updates do not need (torch.optim.Muon makes the same trade)."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype)
    x = x / x.norm().clamp_min(eps)  # spectral norm ≤ Frobenius norm = 1
    tall = x.shape[0] > x.shape[1]
    wide = x.T if tall else x  # iterate on the smaller Gram matrix
    for _ in range(steps):  # X ← aX + (bG + cG²)X with G = XXᵀ
        gram = wide @ wide.T
        wide = torch.addmm(wide, torch.addmm(gram, gram, gram, beta=b, alpha=c), wide, beta=a)
    return (wide.T if tall else wide).to(matrix.dtype)


class MuonSGD(torch.optim.Optimizer):
    """Groups with `muon: True` take Muon steps (filters of ≥ 3 dimensions); the others SGD as
    `torch.optim.SGD` defines it (coupled weight decay, momentum, optional Nesterov).

    Muon's momentum follows torch.optim.Muon: an exponential average of the gradients, and with Nesterov the
    gradient blended towards it. Its groups take no weight decay (their norms are fixed)."""

    def __init__(self, params: Iterable[Any], *, lr: float, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 0.0, ns_dtype: torch.dtype | None = None) -> None:
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay,
                    "muon": False}
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.ndim < 3 for p in group["params"]):
                raise ValueError("Muon groups take convolution filters (≥ 3 dimensions) only")
        self.ns_dtype = ns_dtype  # None: per device, below
        self._ns_dtypes: dict[torch.device, torch.dtype] = {}

    def _ns_dtype(self, device: torch.device) -> torch.dtype:
        # bf16 where the device multiplies in it fast (as torch.optim.Muon always does), float32 where it would
        # be emulated (a CPU without AVX-512-BF16 or AMX).
        if self.ns_dtype is not None:
            return self.ns_dtype
        if device not in self._ns_dtypes:
            self._ns_dtypes[device] = torch.bfloat16 if fast_bf16(device)[0] else torch.float32
        return self._ns_dtypes[device]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._muon_step if group["muon"] else self._sgd_step)(p, group)
        return loss

    def _muon_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        momentum = group["momentum"]
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - momentum)
        update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
        p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(1e-12))
        direction = orthogonalize(update.reshape(p.shape[0], -1), dtype=self._ns_dtype(p.device))
        p.add_(direction.view_as(p), alpha=-group["lr"])

    def _sgd_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        grad = p.grad
        if group["weight_decay"]:
            grad = grad.add(p, alpha=group["weight_decay"])
        momentum = group["momentum"]
        if momentum:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.clone()
            else:
                state["momentum_buffer"].mul_(momentum).add_(grad)
            buf = state["momentum_buffer"]
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        p.add_(grad, alpha=-group["lr"])
