"""Accuracy under attack over a data loader, and robust accuracy against ε.

Success rate (percent of attacked images), as the spec's target mode defines it
(`miniplaces.attacks.spec.TARGETS`):
- `least-likely`: the adversarial prediction equals the target, the class the model found
  least likely on the clean image; over every attacked image.
- `untargeted` (PGD and FGSM): among the images the model classified correctly, the fraction
  the attack makes wrong; `None` when the model got none right.

Top-k accuracies are percentages (0–100); perturbation norms are per image, in pixel units,
averaged over the images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from miniplaces.attacks.spec import AttackSpec
from miniplaces.errors import MiniPlacesError
from miniplaces.pixels import eval_mode


@dataclass(frozen=True)
class AttackBatch:
    """One attacked batch: the images, the targets (targeted modes) and both predictions' logits."""

    x_adv: torch.Tensor
    target: torch.Tensor | None
    clean_logits: torch.Tensor
    adv_logits: torch.Tensor


def attack_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec) -> AttackBatch:
    """Attack one batch as `spec` says and classify both versions."""
    x_adv, target = spec.perturb(model, x, y)
    with eval_mode(model), torch.no_grad():
        clean_logits, adv_logits = model(x), model(x_adv)
    return AttackBatch(x_adv, target, clean_logits, adv_logits)


def _topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1)  # (B,)


def evaluate_attack(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    spec: AttackSpec,
    *,
    limit: int | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Clean and adversarial top-1/top-5, success rate and mean perturbation norms over `loader`.

    Returns `spec.to_dict()` with the measurements added.

    Args:
        model: the classifier, already on `device`.
        loader: yields `(images in [0, 1], labels)` batches.
        limit: attack at most this many images (the first ones the loader gives).
        device: where batches go; default the model's device.
        progress: called after each batch with the number of images it attacked.
    """
    if limit is not None and limit < 1:
        raise MiniPlacesError(f"the image limit must be ≥ 1; got {limit}")
    if device is None:
        device = next(model.parameters()).device
    count = 0
    sums = {"clean_top1": 0, "clean_top5": 0, "adv_top1": 0, "adv_top5": 0, "linf": 0.0, "l2": 0.0}
    hits = attempts = 0
    for x, y in loader:
        if limit is not None and count >= limit:
            break
        if limit is not None:
            x, y = x[: limit - count], y[: limit - count]
        x, y = x.to(device), torch.as_tensor(y).to(device)
        if (y < 0).any():
            raise MiniPlacesError("attacks need labelled images; use the train or val split, not test")
        result = attack_batch(model, x, y, spec)
        delta = (result.x_adv - x).flatten(1)  # (B, C*H*W)
        clean_pred, adv_pred = result.clean_logits.argmax(1), result.adv_logits.argmax(1)
        sums["clean_top1"] += int((clean_pred == y).sum())
        sums["clean_top5"] += int(_topk_correct(result.clean_logits, y, 5).sum())
        sums["adv_top1"] += int((adv_pred == y).sum())
        sums["adv_top5"] += int(_topk_correct(result.adv_logits, y, 5).sum())
        sums["linf"] += float(delta.abs().amax(dim=1).sum())
        sums["l2"] += float(delta.norm(dim=1).sum())
        if result.target is not None:
            hits += int((adv_pred == result.target).sum())
            attempts += len(y)
        else:
            correct = clean_pred == y
            hits += int((correct & (adv_pred != y)).sum())
            attempts += int(correct.sum())
        count += len(y)
        if progress is not None:
            progress(len(y))
    if count == 0:
        raise MiniPlacesError("no images to attack: the loader is empty")
    return {
        **spec.to_dict(),
        "images": count,
        "clean_top1": 100.0 * sums["clean_top1"] / count,
        "clean_top5": 100.0 * sums["clean_top5"] / count,
        "adv_top1": 100.0 * sums["adv_top1"] / count,
        "adv_top5": 100.0 * sums["adv_top5"] / count,
        "success_rate": 100.0 * hits / attempts if attempts else None,
        "success_definition": spec.success_definition,
        "mean_linf": sums["linf"] / count,
        "mean_l2": sums["l2"] / count,
    }


def robustness_sweep(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    spec: AttackSpec,
    eps_list: Sequence[float],
    *,
    limit: int | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """`evaluate_attack` of `spec` at each ε (a default step stays ε/10); rows in the order of `eps_list`.

    `progress` hears every batch of every ε: the sweep's total is the images times `len(eps_list)`.
    """
    if not eps_list:
        raise MiniPlacesError("the sweep needs at least one ε")
    return [evaluate_attack(model, loader, spec.with_eps(eps), limit=limit, device=device, progress=progress)
            for eps in eps_list]
