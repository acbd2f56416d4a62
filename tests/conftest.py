"""Shared fixtures: tiny synthetic datasets made once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from miniplaces.data.synth import synthesize

# Beside the repository by default; MINIPLACES_REAL_ROOT points elsewhere (e.g. from a git worktree).
SHARED_MINIPLACES = Path(
    os.environ.get("MINIPLACES_REAL_ROOT", Path(__file__).resolve().parents[1].parent / "shared" / "miniplaces")
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module", autouse=True)
def _module_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test module that sets `TORCH_THREADS = n` runs (with its module fixtures) on n torch threads."""
    count = getattr(request.module, "TORCH_THREADS", None)
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes × 12 train, 4 val per class, 5 test images, 32×32 (read-only: copy before damaging)."""
    return synthesize(tmp_path_factory.mktemp("synth"), classes=4, per_class=12, val_per_class=4,
                      test_count=5, image_size=32, seed=0)


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real MiniPlaces subset beside the repository; tests using it are marked `real_data`."""
    if not (SHARED_MINIPLACES / "train.txt").is_file():
        pytest.skip(f"real MiniPlaces subset not found at {SHARED_MINIPLACES}")
    return SHARED_MINIPLACES
