"""The attack adversarial training applies to each batch, as a function `(model, x, y) → x_adv`.

Madry et al. (2018) train on untargeted PGD examples made from the current weights; FGSM
(one step of size ε) is the cheap variant. The attacks take input gradients only, so the
training step that follows sees no trace of them in the parameters' `.grad`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from miniplaces.attacks.spec import AttackSpec

Adversary = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def make_adversary(spec: AttackSpec | None) -> Adversary | None:
    """The batch attack of adversarial training as `spec` says, or None (no adversarial training)."""
    if spec is None:
        return None

    def adversary(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return spec.perturb(model, x, y)[0]

    return adversary
