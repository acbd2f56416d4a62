"""Accuracy under attack over a data loader, and robust accuracy against ε.

Success rate (percent of attacked images):
- `least-likely`: the adversarial prediction equals the target, the class the model found
  least likely on the clean image; over every attacked image.
- `untargeted` and `fgsm`: among the images the model classified correctly, the fraction the
  attack makes wrong; `None` when the model got none right.

Top-k accuracies are percentages (0–100); perturbation norms are per image, in pixel units,
averaged over the images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from miniplaces.attacks.eps import format_eps
from miniplaces.attacks.pgd import DEFAULT_STEPS, eval_mode, fgsm, least_likely_labels, pgd
from miniplaces.errors import MiniPlacesError

ATTACK_MODES: tuple[str, ...] = ("least-likely", "untargeted", "fgsm")


@dataclass(frozen=True)
class AttackBatch:
    """One attacked batch: the images, the targets (least-likely mode) and both predictions' logits."""

    x_adv: torch.Tensor
    target: torch.Tensor | None
    clean_logits: torch.Tensor
    adv_logits: torch.Tensor


def attack_settings(mode: str, eps: float, steps: int, step_size: float | None, random_start: bool) -> dict[str, Any]:
    """The settings as they are applied (FGSM: one step of size ε), for reports."""
    if mode not in ATTACK_MODES:
        raise MiniPlacesError(f"unknown attack mode {mode!r}; choose one of {', '.join(ATTACK_MODES)}")
    if mode == "fgsm":
        steps, step_size, random_start = 1, eps, False
    elif step_size is None:
        step_size = eps / 10
    return {"mode": mode, "eps": eps, "eps_text": format_eps(eps), "steps": steps, "step_size": step_size,
            "random_start": random_start}


def attack_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mode: str = "least-likely",
    eps: float,
    steps: int = DEFAULT_STEPS,
    step_size: float | None = None,
    random_start: bool = False,
) -> AttackBatch:
    """Attack one batch with `mode` (`least-likely`, `untargeted` or `fgsm`) and classify both versions."""
    settings = attack_settings(mode, eps, steps, step_size, random_start)
    target = None
    if mode == "fgsm":
        x_adv = fgsm(model, x, y, eps=eps)
    else:
        if mode == "least-likely":
            target = least_likely_labels(model, x)
        x_adv = pgd(model, x, y, eps=eps, step_size=settings["step_size"], steps=steps, mode=mode,  # type: ignore[arg-type]
                    random_start=random_start, target=target)
    with eval_mode(model), torch.no_grad():
        clean_logits, adv_logits = model(x), model(x_adv)
    return AttackBatch(x_adv, target, clean_logits, adv_logits)


def _topk_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1)  # (B,)


def evaluate_attack(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    mode: str = "least-likely",
    eps: float,
    steps: int = DEFAULT_STEPS,
    step_size: float | None = None,
    random_start: bool = False,
    limit: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Clean and adversarial top-1/top-5, success rate and mean perturbation norms over `loader`.

    Args:
        model: the classifier, already on `device`.
        loader: yields `(images in [0, 1], labels)` batches.
        limit: attack at most this many images (the first ones the loader gives).
        device: where batches go; default the model's device.
    """
    if limit is not None and limit < 1:
        raise MiniPlacesError(f"limit must be ≥ 1 image; got {limit}")
    settings = attack_settings(mode, eps, steps, step_size, random_start)
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
        result = attack_batch(model, x, y, mode=mode, eps=eps, steps=steps, step_size=step_size,
                              random_start=random_start)
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
    if count == 0:
        raise MiniPlacesError("no images to attack: the loader is empty")
    return {
        **settings,
        "images": count,
        "clean_top1": 100.0 * sums["clean_top1"] / count,
        "clean_top5": 100.0 * sums["clean_top5"] / count,
        "adv_top1": 100.0 * sums["adv_top1"] / count,
        "adv_top5": 100.0 * sums["adv_top5"] / count,
        "success_rate": 100.0 * hits / attempts if attempts else None,
        "success_definition": (
            "adversarial prediction equals the least-likely class of the clean image, over all attacked images"
            if mode == "least-likely"
            else "correctly classified images the attack makes wrong, over the correctly classified images"
        ),
        "mean_linf": sums["linf"] / count,
        "mean_l2": sums["l2"] / count,
    }


def robustness_sweep(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    eps_list: Sequence[float],
    mode: str = "least-likely",
    steps: int = DEFAULT_STEPS,
    step_size: float | None = None,
    random_start: bool = False,
    limit: int | None = None,
    device: str | torch.device | None = None,
) -> list[dict[str, Any]]:
    """`evaluate_attack` at each ε (step size ε/10 unless given); rows in the order of `eps_list`."""
    if not eps_list:
        raise MiniPlacesError("the sweep needs at least one ε")
    return [
        evaluate_attack(model, loader, mode=mode, eps=eps, steps=steps, step_size=step_size,
                        random_start=random_start, limit=limit, device=device)
        for eps in eps_list
    ]
