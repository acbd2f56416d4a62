"""Attack budgets as users write them: `6/255`, `0.0235`, `0`; lists like `0,1/255,2/255`.

Budgets are in pixel units, images in [0, 1]. The study's ε = 0.1 in normalised units
(divided by the ImageNet std, ≈ 0.226 on average) is ≈ 0.0226 ≈ 6/255 in pixel units.
"""

from __future__ import annotations

import math

from miniplaces.errors import MiniPlacesError

DEFAULT_EPS = 6 / 255


def parse_eps(text: str | float) -> float:
    """A budget in pixel units from `"6/255"`, `"0.0235"` or a number; must lie in [0, 1]."""
    if isinstance(text, int | float):
        value = float(text)
        shown = repr(text)
    else:
        shown = repr(text)
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
