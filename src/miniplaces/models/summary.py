"""Size and compute of models: parameters and multiply-adds for one image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from miniplaces.models.registry import create_model, list_models, model_entry


@dataclass(frozen=True)
class ModelSummary:
    name: str
    parameters: int
    macs: int  # multiply-adds for one image
    description: str


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int = 128) -> int:
    """Multiply-adds of one forward pass on a `(1, 3, S, S)` image (FLOPs / 2, by FlopCounterMode)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        # The counter has no formula for the CPU flash-attention kernel; the math backend
        # spells attention out as matmuls, which it counts.
        with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
            model(torch.rand(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def summarize_models(names: Sequence[str] | None = None, image_size: int = 128,
                     num_classes: int = 100) -> list[ModelSummary]:
    """One row per registered model (or per name in `names`), built with its default arguments for `image_size`."""
    rows = []
    for name in names or list_models():
        entry = model_entry(name)
        model = create_model(name, num_classes=num_classes, image_size=image_size)
        rows.append(ModelSummary(name, count_parameters(model), count_macs(model, image_size), entry.description))
    return rows
