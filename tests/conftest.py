"""Shared fixtures: tiny synthetic datasets made once per test session."""

from __future__ import annotations

import dataclasses
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


@pytest.fixture(scope="session")
def produced_runs(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    """Two run folders written by the real commands, for the report to read (read-only: copy before editing).

    `runs/native`: simplenet, 2 epochs, then `eval`, `saliency` and `attack --sweep`.
    `runs/unfold`: simplenet_unfold planned for 3 epochs and interrupted (SIGINT) after epoch 2.
    """
    from tiny_runs import interrupt_at_step

    from miniplaces.cli import main
    from miniplaces.config import TrainConfig
    from miniplaces.workflows.train import TrainingInterrupted, train

    runs = tmp_path_factory.mktemp("produced") / "runs"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base = TrainConfig(root=str(synth_root), out_dir=str(runs), epochs=2, batch_size=16, lr=0.05,
                           warmup_epochs=1, workers=0, image_size=32, device="cpu", log_every=1)
        native = train(dataclasses.replace(base, model="simplenet", name="native"), progress=False)
        with pytest.raises(TrainingInterrupted):  # at the last of epoch 2's 3 steps
            train(dataclasses.replace(base, model="simplenet_unfold", name="unfold", epochs=3),
                  on_step=interrupt_at_step(6), progress=False)
        best = str(native / "checkpoints" / "best.pt")
        common = ["--checkpoint", best, "--root", str(synth_root), "--device", "cpu"]
        assert main(["eval", *common[:4], "--workers", "0", "--device", "cpu"]) == 0
        assert main(["saliency", *common, "--n", "4"]) == 0
        assert main(["attack", *common, "--mode", "untargeted", "--eps", "4/255", "--steps", "2", "--limit", "8",
                     "--grid", "2", "--sweep", "0,2/255,4/255"]) == 0
    finally:
        torch.set_num_threads(previous)
    return runs
