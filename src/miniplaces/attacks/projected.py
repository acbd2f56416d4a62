"""Projected gradient attacks under an L∞ bound, in pixel units (images in [0, 1]): PGD, and FGSM as its one step.

Each step costs one forward and one backward pass; the gradient is taken with
`torch.autograd.grad` with respect to the input only, so nothing accumulates in the
parameters' `.grad` and their `requires_grad` flags are left alone. The model runs in
eval mode during the attack and every module's train/eval mode is restored afterwards.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from miniplaces.errors import MiniPlacesError
from miniplaces.pixels import DEFAULT_EPS, DEFAULT_STEPS, check_images, eval_mode, input_gradient

PGDMode = Literal["least-likely", "untargeted"]
PGD_MODES: tuple[str, ...] = ("least-likely", "untargeted")
PGD_NORMS: tuple[str, ...] = ("linf",)


def least_likely_labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The class each image is least likely to be, according to `model` (in eval mode)."""
    with eval_mode(model), torch.no_grad():
        return model(x).argmin(dim=1)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    eps: float = DEFAULT_EPS,
    step_size: float | None = None,
    steps: int = DEFAULT_STEPS,
    mode: PGDMode = "least-likely",
    random_start: bool = False,
    target: torch.Tensor | None = None,
    norm: str = "linf",
) -> torch.Tensor:
    """Projected gradient descent under ‖x_adv − x‖∞ ≤ eps, x_adv in [0, 1].

    Args:
        model: a classifier taking images in [0, 1].
        x: clean images (B, C, H, W) in [0, 1].
        y: true labels (B,); needed for `untargeted`, ignored for `least-likely`.
        eps: the L∞ budget in pixel units (default 6/255, the study's 0.1 in normalised units).
        step_size: the signed-gradient step; default eps / 10 (the study's).
        steps: number of steps, each one forward + one backward.
        mode: `least-likely` descends the loss of the class the model finds least likely on the
            clean input (found once, before the first step); `untargeted` ascends the loss of `y`.
        random_start: start from a uniform point of the ε-ball instead of `x`.
        target: for `least-likely`, use these target classes instead of the least likely ones.
        norm: the threat model's norm; `linf` (the only one so far, see docs/attacks.md).

    Returns:
        The adversarial images, detached, same shape and dtype as `x`.
    """
    check_images(x, "attacks")
    if mode not in PGD_MODES:
        raise MiniPlacesError(f"unknown PGD mode {mode!r}; choose one of {', '.join(PGD_MODES)}")
    if norm not in PGD_NORMS:
        raise MiniPlacesError(f"PGD has no {norm!r} norm; choose one of {', '.join(PGD_NORMS)}")
    if eps < 0 or steps < 0:
        raise MiniPlacesError(f"PGD needs eps ≥ 0 and steps ≥ 0; got eps={eps}, steps={steps}")
    step = eps / 10 if step_size is None else step_size
    if step < 0:
        raise MiniPlacesError(f"PGD step size must be ≥ 0; got {step}")
    x = x.detach()
    if mode == "untargeted" and y is None:
        raise MiniPlacesError("untargeted PGD ascends the loss of the true label: pass the labels y")
    with eval_mode(model), torch.enable_grad():
        if mode == "least-likely":
            labels = least_likely_labels(model, x) if target is None else target
            sign = -1.0  # towards the target: descend its loss
        else:
            labels = y
            sign = 1.0  # away from the true label: ascend its loss
        low = (x - eps).clamp(0, 1)
        high = (x + eps).clamp(0, 1)
        x_adv = x.clone()
        if random_start and eps > 0:
            x_adv = torch.max(torch.min(x_adv + torch.empty_like(x).uniform_(-eps, eps), high), low)
        if eps == 0:
            return x_adv
        for _ in range(steps):
            grad = input_gradient(model, x_adv, labels)
            # Project onto the ε-ball around x and the pixel range in one clamp: low/high hold both.
            x_adv = torch.max(torch.min(x_adv + sign * step * grad.sign(), high), low)
    return x_adv.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Fast gradient sign method: one untargeted step of size eps, clamped to [0, 1]."""
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, mode="untargeted")
