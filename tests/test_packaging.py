"""The package declares torch/torchvision as ranges, so `pip install` keeps a user's own torch."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
import torchvision

packaging = pytest.importorskip("packaging.requirements")
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {Requirement(r).name: Requirement(r) for r in project["dependencies"]}


@pytest.mark.parametrize("name", ["torch", "torchvision"])
def test_torch_is_a_range_with_a_lower_bound_and_no_pin(name):
    spec = requirements()[name].specifier
    operators = {s.operator for s in spec}
    assert ">=" in operators, f"{name} needs the lowest tested version as a lower bound"
    assert "==" not in operators and "~=" not in operators and "<" not in operators and "<=" not in operators, (
        f"{name} must not be pinned or capped: pip would replace the user's own build"
    )
    # Versions far above today's release are admitted; a version below the floor is not.
    assert spec.contains("99.0")
    floor = Version(next(s.version for s in spec if s.operator == ">="))
    assert not spec.contains(f"{floor.major - 1}.0")


@pytest.mark.parametrize("module", [torch, torchvision])
def test_the_running_torch_is_admitted(module):
    version = module.__version__.split("+")[0]  # local tags like +cpu or +cu121 are not part of the range
    assert requirements()[module.__name__].specifier.contains(version)


def test_ci_pins_what_the_package_leaves_open():
    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower()] = req
    for name in ("torch", "torchvision"):
        assert [s.operator for s in pins[name].specifier] == ["=="], f".ci/constraints.txt must pin {name} exactly"
