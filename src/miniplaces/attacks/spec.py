"""An attack's settings (`AttackSpec`), parsed once where they enter, and the table of attacks.

Where settings enter: the flags of `miniplaces attack`, the `adv_*` keys of a training config
and the demo's options. Each builds an `AttackSpec`; everything after that (the attack
itself, the success rate, the settings line, the `attack.json` record) reads the spec.

`ATTACKS` maps an attack's kind to its function, the target modes and norms it supports
and its description; `TARGETS` maps a target mode to how its labels are chosen and what
counts as a success. The command line's choices and the config's allowed values are
derived from them, so adding an attack is a function plus a row (docs/attacks.md).

This module imports no torch at load time (the command line builds its parser from it);
the attack functions are imported when an attack runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from miniplaces.errors import MiniPlacesError
from miniplaces.pixels import DEFAULT_EPS, DEFAULT_STEPS, format_eps, parse_eps

if TYPE_CHECKING:
    import torch
    from torch import nn



class AttackSpecError(MiniPlacesError):
    """Attack settings that no attack accepts: unknown kind, target or norm, or a value out of range."""


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec,
         target: torch.Tensor | None) -> torch.Tensor:
    from miniplaces.attacks.projected import pgd

    return pgd(model, x, y, eps=spec.eps, step_size=spec.step, steps=spec.steps, mode=spec.target,  # type: ignore[arg-type]
               random_start=spec.random_start, target=target, norm=spec.norm)


def _fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec,
          target: torch.Tensor | None) -> torch.Tensor:
    from miniplaces.attacks.projected import fgsm

    return fgsm(model, x, y, eps=spec.eps)


def _least_likely(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from miniplaces.attacks.projected import least_likely_labels

    return least_likely_labels(model, x)


AttackFunction = Callable[["nn.Module", "torch.Tensor", "torch.Tensor", "AttackSpec", "torch.Tensor | None"],
                          "torch.Tensor"]


@dataclass(frozen=True)
class Attack:
    """A row of `ATTACKS`.

    Args:
        function: `(model, x, y, spec, target labels or None) → x_adv`.
        label: the name in settings lines (`PGD`).
        modes: the names users give it (`--mode`, a record's `mode`) → the target mode each stands for.
        norms: the norms of the threat models it implements.
        iterative: whether it takes steps, a step size and a random start; if not, it is one step of size ε.
        description: one line for help texts and docs.
    """

    function: AttackFunction
    label: str
    modes: dict[str, str]
    norms: tuple[str, ...]
    iterative: bool
    description: str


@dataclass(frozen=True)
class Target:
    """A row of `TARGETS`: how the target labels are chosen (None: the true labels), what a success is,
    and which way the attack pushes."""

    labels: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None
    success: str
    description: str


TARGETS: dict[str, Target] = {
    "untargeted": Target(
        None, "correctly classified images the attack makes wrong, over the correctly classified images",
        "away from the true class"),
    "least-likely": Target(
        _least_likely,
        "adversarial prediction equals the least-likely class of the clean image, over all attacked images",
        "towards the class the model finds least likely on the clean image"),
}

ATTACKS: dict[str, Attack] = {
    "pgd": Attack(_pgd, "PGD", {"least-likely": "least-likely", "untargeted": "untargeted"}, ("linf",), True,
                  "projected gradient descent: signed-gradient steps, each projected back onto the ε-ball"),
    "fgsm": Attack(_fgsm, "FGSM", {"fgsm": "untargeted"}, ("linf",), False,
                   "fast gradient sign method: one untargeted step of size ε"),
}

ATTACK_KINDS: tuple[str, ...] = tuple(ATTACKS)
TARGET_MODES: tuple[str, ...] = tuple(TARGETS)
NORMS: tuple[str, ...] = tuple(dict.fromkeys(norm for attack in ATTACKS.values() for norm in attack.norms))
# Each name users give (`--mode`, a record's `mode`) → (kind, target mode).
ATTACK_MODES: dict[str, tuple[str, str]] = {
    mode: (kind, target) for kind, attack in ATTACKS.items() for mode, target in attack.modes.items()
}


def mode_description(mode: str) -> str:
    """`least-likely` → `PGD towards the class the model finds least likely on the clean image`."""
    kind, target = ATTACK_MODES[mode]
    return f"{ATTACKS[kind].label} {TARGETS[target].description}"


def _choose(what: str, value: Any, known: tuple[str, ...] | list[str]) -> str:
    if value not in known:
        raise AttackSpecError(f"unknown {what} {value!r}; choose one of {', '.join(known)}")
    return value


@dataclass(frozen=True)
class AttackSpec:
    """One attack's settings, in pixel units (images in [0, 1]).

    Args:
        kind: a key of `ATTACKS` (`pgd`, `fgsm`).
        target: a target mode the kind supports (`least-likely`: towards the class the model finds least
            likely on the clean image; `untargeted`: away from the true class).
        eps: the budget, ‖x_adv − x‖ ≤ eps in `norm`.
        steps: iterations, each a forward and a backward.
        step_size: the step; None → ε/10 (the study's), rescaled with ε in a sweep.
        random_start: start from a random point of the ε-ball.
        norm: the threat model's norm (`linf`).

    A kind that is not iterative (FGSM) is one step of size ε: its steps, step size and random start
    are set to what it applies, so the spec always says what ran.
    """

    kind: str = "pgd"
    target: str = "least-likely"
    eps: float = DEFAULT_EPS
    steps: int = DEFAULT_STEPS
    step_size: float | None = None
    random_start: bool = False
    norm: str = "linf"

    def __post_init__(self) -> None:
        attack = ATTACKS[_choose("attack", self.kind, ATTACK_KINDS)]
        _choose(f"target mode of {self.kind}", self.target, list(dict.fromkeys(attack.modes.values())))
        _choose(f"norm of {self.kind}", self.norm, attack.norms)
        for name, value in (("eps", self.eps), ("step_size", self.step_size)):
            if value is None and name == "step_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise AttackSpecError(f"attack {name} must be a finite number ≥ 0 in pixel units; got {value!r}")
        if self.eps > 1:
            raise AttackSpecError(f"attack eps {self.eps:g} is larger than the pixel range [0, 1]; "
                                  f"did you mean {self.eps:g}/255?")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise AttackSpecError(f"attack steps must be an integer ≥ 1; got {self.steps!r}")
        if not isinstance(self.random_start, bool):
            raise AttackSpecError(f"attack random_start must be true or false; got {self.random_start!r}")
        if not attack.iterative:
            # Frozen: set once what a one-step attack applies.
            object.__setattr__(self, "steps", 1)
            object.__setattr__(self, "step_size", None)
            object.__setattr__(self, "random_start", False)
        object.__setattr__(self, "eps", float(self.eps))

    @classmethod
    def parse(cls, *, kind: str = "pgd", target: str = "least-likely", eps: str | float = DEFAULT_EPS,
              steps: int = DEFAULT_STEPS, step_size: str | float | None = None, random_start: bool = False,
              norm: str = "linf") -> AttackSpec:
        """A spec from values as users write them: ε and the step size as `6/255` or `0.0235`."""
        try:
            step = None if step_size is None else parse_eps(step_size)
        except MiniPlacesError as err:
            raise AttackSpecError(f"step size: {err}") from None
        return cls(kind=kind, target=target, eps=parse_eps(eps), steps=steps, step_size=step,
                   random_start=random_start, norm=norm)

    @classmethod
    def from_mode(cls, mode: str, **values: Any) -> AttackSpec:
        """A spec from a name users give (`ATTACK_MODES`: `least-likely`, `untargeted`, `fgsm`) and `parse`'s values."""
        kind, target = ATTACK_MODES[_choose("attack mode", mode, list(ATTACK_MODES))]
        return cls.parse(kind=kind, target=target, **values)

    @property
    def attack(self) -> Attack:
        return ATTACKS[self.kind]

    @property
    def mode(self) -> str:
        """The user-facing name of this kind and target (`least-likely`, `untargeted`, `fgsm`)."""
        return next(mode for mode, target in self.attack.modes.items() if target == self.target)

    @property
    def step(self) -> float:
        """The step applied: ε for a one-step attack, else `step_size`, else ε/10."""
        if not self.attack.iterative:
            return self.eps
        return self.eps / 10 if self.step_size is None else self.step_size

    @property
    def success_definition(self) -> str:
        return TARGETS[self.target].success

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The adversarial images of this attack on `(x, y)`, and the target labels (None when untargeted)."""
        choose = TARGETS[self.target].labels
        target = None if choose is None else choose(model, x)
        return self.attack.function(model, x, y, self, target), target

    def with_eps(self, eps: float) -> AttackSpec:
        """The same attack at another budget (a default step stays ε/10 of the new one)."""
        return dataclasses.replace(self, eps=eps)

    def describe(self) -> str:
        """One line, e.g. `untargeted PGD, ε = 4/255, 10 steps of 0.4/255` or `fgsm, ε = 4/255`."""
        norm = "" if self.norm == "linf" else f" ({self.norm})"
        if not self.attack.iterative:
            return f"{self.mode}{norm}, ε = {format_eps(self.eps)}"
        start = ", random start" if self.random_start else ""
        return (f"{self.target} {self.attack.label}{norm}, ε = {format_eps(self.eps)}, {self.steps} steps of "
                f"{self.step * 255:.3g}/255{start}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as applied, for records (`attack.json`); `from_dict` reads them back."""
        return {"mode": self.mode, "kind": self.kind, "target": self.target, "norm": self.norm, "eps": self.eps,
                "eps_text": format_eps(self.eps), "steps": self.steps, "step_size": self.step,
                "default_step": self.step_size is None, "random_start": self.random_start}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttackSpec:
        """A spec from `to_dict`'s mapping; records without `kind` name the attack by `mode` alone."""
        if not isinstance(data, dict):
            raise AttackSpecError(f"attack settings must be a mapping; got {type(data).__name__}")
        if "kind" in data:
            kind, target = data["kind"], data.get("target", "untargeted")
        else:
            kind, target = ATTACK_MODES[_choose("attack mode", data.get("mode"), list(ATTACK_MODES))]
        step = data.get("step_size")
        return cls(kind=kind, target=target, eps=data.get("eps", DEFAULT_EPS), steps=data.get("steps", DEFAULT_STEPS),
                   step_size=None if data.get("default_step") else step, random_start=data.get("random_start", False),
                   norm=data.get("norm", "linf"))
