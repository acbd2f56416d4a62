"""Optimisers of the study (SGD, AdamW) and of the fast recipe (Muon + SGD), with optional no-weight-decay
groups for norms and biases."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from miniplaces.engine.muon import MuonSGD
from miniplaces.errors import MiniPlacesError


def param_groups(model: nn.Module, weight_decay: float, no_wd_norm_bias: bool) -> list[dict[str, Any]]:
    """One group with `weight_decay`, or two: decayed weights and undecayed biases / norm scales.

    Biases and norm weights are the 1-d parameters; a model may name more (position
    embeddings, class token) in `no_weight_decay()`, as timm models do.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not no_wd_norm_bias:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in params:
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, *, lr: float, weight_decay: float, momentum: float = 0.9,
                    nesterov: bool = False, no_wd_norm_bias: bool = False, muon_lr: float = 0.08,
                    muon_momentum: float = 0.6) -> torch.optim.Optimizer:
    """`sgd` (Nesterov off by default, as in the study), `adamw`, or `muon`: Muon at `muon_lr` for the
    convolution filters, SGD at `lr` for everything else (`MuonSGD`)."""
    groups = param_groups(model, weight_decay, no_wd_norm_bias)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "muon":
        filters = [p for group in groups for p in group["params"] if p.ndim >= 3]
        if not filters:
            raise MiniPlacesError(f"optimizer muon trains convolution filters, and {type(model).__name__} has none "
                                  "that train; use sgd or adamw")
        rest = [{**group, "params": [p for p in group["params"] if p.ndim < 3]} for group in groups]
        muon = {"params": filters, "muon": True, "lr": muon_lr, "momentum": muon_momentum, "nesterov": True,
                "weight_decay": 0.0}
        return MuonSGD([g for g in rest if g["params"]] + [muon], lr=lr, momentum=momentum, nesterov=nesterov,
                       weight_decay=weight_decay)
    raise MiniPlacesError(f"unknown optimizer {name!r}; use sgd, adamw or muon")
