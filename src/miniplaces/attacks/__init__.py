"""Adversarial attacks as pure functions of (model, x, y), in pixel units (images in [0, 1])."""

from miniplaces.attacks.eps import DEFAULT_EPS, format_eps, parse_eps, parse_eps_list
from miniplaces.attacks.evaluate import (
    ATTACK_MODES,
    AttackBatch,
    attack_batch,
    attack_settings,
    evaluate_attack,
    robustness_sweep,
)
from miniplaces.attacks.pgd import DEFAULT_STEPS, PGD_MODES, eval_mode, fgsm, least_likely_labels, pgd
from miniplaces.attacks.training import ADV_TRAIN_KINDS, make_adversary

__all__ = [
    "ADV_TRAIN_KINDS",
    "ATTACK_MODES",
    "DEFAULT_EPS",
    "DEFAULT_STEPS",
    "PGD_MODES",
    "AttackBatch",
    "attack_batch",
    "attack_settings",
    "eval_mode",
    "evaluate_attack",
    "fgsm",
    "format_eps",
    "least_likely_labels",
    "make_adversary",
    "parse_eps",
    "parse_eps_list",
    "pgd",
    "robustness_sweep",
]
