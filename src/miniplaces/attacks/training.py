"""The attack adversarial training applies to each batch, as a function `(model, x, y) → x_adv`.

Madry et al. (2018) train on untargeted PGD examples made from the current weights; FGSM
(one step of size ε) is the cheap variant. The attacks take input gradients only, so the
training step that follows sees no trace of them in the parameters' `.grad`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from miniplaces.attacks.eps import DEFAULT_EPS
from miniplaces.attacks.pgd import DEFAULT_STEPS, PGD_MODES, fgsm, pgd
from miniplaces.errors import MiniPlacesError

Adversary = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
ADV_TRAIN_KINDS: tuple[str, ...] = ("none", "pgd", "fgsm")


def make_adversary(
    kind: str,
    *,
    eps: float = DEFAULT_EPS,
    steps: int = DEFAULT_STEPS,
    step_size: float | None = None,
    mode: str = "untargeted",
) -> Adversary | None:
    """The batch attack of adversarial training, or None for `kind="none"`.

    Args:
        kind: `pgd`, `fgsm` or `none`.
        eps: L∞ budget in pixel units.
        steps, step_size, mode: PGD's (step size default ε/10, as `pgd`); FGSM ignores them.
    """
    if kind not in ADV_TRAIN_KINDS:
        raise MiniPlacesError(f"unknown adversarial training {kind!r}; choose one of {', '.join(ADV_TRAIN_KINDS)}")
    if kind == "none":
        return None
    if kind == "fgsm":
        return partial(fgsm, eps=eps)
    if mode not in PGD_MODES:
        raise MiniPlacesError(f"unknown PGD mode {mode!r}; choose one of {', '.join(PGD_MODES)}")
    return partial(pgd, eps=eps, steps=steps, step_size=step_size, mode=mode)  # type: ignore[arg-type]
