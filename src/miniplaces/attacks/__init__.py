"""Adversarial attacks as pure functions of (model, x, y), in pixel units (images in [0, 1]).

The spec and its table (`miniplaces.attacks.spec`) load without torch, so the command line can
build its choices from them; the attack functions load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from miniplaces.attacks.spec import (
    ATTACK_KINDS,
    ATTACK_MODES,
    ATTACKS,
    DEFAULT_STEPS,
    NORMS,
    TARGET_MODES,
    TARGETS,
    AttackSpec,
    AttackSpecError,
)

# Names whose modules import torch: loaded when first asked for (PEP 562).
_LAZY = {
    "AttackBatch": "evaluate", "attack_batch": "evaluate", "evaluate_attack": "evaluate",
    "robustness_sweep": "evaluate", "fgsm": "projected", "least_likely_labels": "projected", "pgd": "projected",
    "make_adversary": "training",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"miniplaces.attacks.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'miniplaces.attacks' has no attribute {name!r}")


__all__ = [
    "ATTACKS",
    "ATTACK_KINDS",
    "ATTACK_MODES",
    "DEFAULT_STEPS",
    "NORMS",
    "TARGETS",
    "TARGET_MODES",
    "AttackBatch",
    "AttackSpec",
    "AttackSpecError",
    "attack_batch",
    "evaluate_attack",
    "fgsm",
    "least_likely_labels",
    "make_adversary",
    "pgd",
    "robustness_sweep",
]
