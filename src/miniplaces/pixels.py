"""Images as every model here takes them: float `(B, C, H, W)` in [0, 1], in pixel units.

What attacks and saliency share, below both: budgets written the way users write them
(`6/255`, `0.0235`; lists like `0,1/255,2/255`), the image check, running a model in eval
mode with each module's own mode restored, and the gradient of the loss with respect to
the pixels. The study's ε = 0.1 in normalised units (divided by the ImageNet std, ≈ 0.226
on average) is ≈ 0.0226 ≈ 6/255 in pixel units.

A file of its own rather than part of `attacks/`: the config parses ε, and saliency takes
input gradients, without depending on the attacks. It loads without torch (the command line
and the attack table read the budgets); `input_gradient` imports torch when first called.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from miniplaces.errors import MiniPlacesError

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_EPS = 6 / 255  # the study's attack budget
DEFAULT_STEPS = 10  # and its number of PGD steps


def parse_eps(text: str | float) -> float:
    """A budget in pixel units from `"6/255"`, `"0.0235"` or a number; must lie in [0, 1]."""
    shown = repr(text)
    if isinstance(text, int | float):
        value = float(text)
    else:
        stripped = text.strip()
        if not stripped:
            raise MiniPlacesError("empty ε; write it as a fraction like 6/255 or a decimal like 0.0235")
        numerator, slash, denominator = stripped.partition("/")
        try:
            value = float(numerator)
            if slash:
                divisor = float(denominator)
                if divisor == 0:
                    raise MiniPlacesError(f"ε {shown} divides by zero; write it like 6/255")
                value /= divisor
        except ValueError:
            raise MiniPlacesError(
                f"cannot read ε {shown}; write it as a fraction like 6/255 or a decimal like 0.0235"
            ) from None
    if not math.isfinite(value) or value < 0:
        raise MiniPlacesError(f"ε {shown} must be a finite number ≥ 0 (pixel units, images in [0, 1])")
    if value > 1:
        raise MiniPlacesError(
            f"ε {shown} = {value:g} is larger than the whole pixel range [0, 1]; "
            f"budgets are in pixel units: did you mean {value:g}/255?"
        )
    return value


def parse_eps_list(text: str) -> list[float]:
    """Budgets from a comma-separated list, e.g. `0,1/255,2/255,4/255,8/255`."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise MiniPlacesError(f"no ε in {text!r}; give a comma-separated list like 0,1/255,2/255")
    return [parse_eps(part) for part in parts]


def format_eps(eps: float) -> str:
    """`6/255` when ε is a whole number of 8-bit levels, else a short decimal."""
    levels = eps * 255
    if abs(levels - round(levels)) < 1e-6:
        return f"{round(levels)}/255" if round(levels) else "0"
    return f"{eps:.4g}"


def check_images(x: torch.Tensor, user: str) -> None:
    """Refuse anything but a float batch `(B, C, H, W)`; `user` names who needs it ("attacks", "saliency")."""
    if not x.is_floating_point() or x.dim() != 4:
        raise MiniPlacesError(
            f"{user} take float images of shape (B, C, H, W) in [0, 1]; got {x.dtype} of shape {tuple(x.shape)}"
        )


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode and give every submodule back its own mode afterwards."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def input_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """∂(sum of the cross-entropy losses)/∂x, same shape as x.

    Summed, so each image's gradient ignores the batch size; taken with `torch.autograd.grad`
    for the input only, so nothing accumulates in the parameters' `.grad`.
    """
    import torch
    import torch.nn.functional as F

    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad
