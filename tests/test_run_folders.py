"""Run folders (issue 12): claimed before anything is built, restartable when a start died before its
first checkpoint, never two writers; a diverged val epoch is never `best.pt`; stale temporary files go."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from miniplaces.config import TrainConfig
from miniplaces.engine.checkpoint import load_checkpoint
from miniplaces.rundir import RunBusyError, RunDir, RunExistsError, claim_run
from miniplaces.workflows.train import train

TORCH_THREADS = 1


def tiny(root: Path, out: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(root=str(root), out_dir=str(out), name="run", epochs=2, batch_size=16, lr=0.05,
                       warmup_epochs=1, workers=0, image_size=32, device="cpu", log_every=1, limit_train_batches=2,
                       limit_val_batches=1)
    return dataclasses.replace(base, **changes)


def test_two_claims_racing_for_one_folder_one_wins(tmp_path: Path) -> None:
    for attempt in range(5):
        run = RunDir(tmp_path / f"race{attempt}")
        start = threading.Barrier(2)
        outcomes: list[object] = []

        def claim(run: RunDir = run, start: threading.Barrier = start, outcomes: list[object] = outcomes) -> None:
            start.wait()
            try:
                outcomes.append(claim_run(run, fresh=True))
            except RunBusyError as err:
                outcomes.append(err)

        threads = [threading.Thread(target=claim) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        busy = [o for o in outcomes if isinstance(o, RunBusyError)]
        assert len(busy) == 1 and f"pid {os.getpid()}" in str(busy[0])
        for outcome in outcomes:
            if not isinstance(outcome, RunBusyError):
                outcome.release()  # type: ignore[attr-defined]


def test_a_live_owner_in_another_process_blocks_until_it_dies(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "held")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from miniplaces.rundir import RunDir; "
         "from miniplaces.rundir import claim_run; claim_run(RunDir(sys.argv[1]), fresh=True); "
         "print('held', flush=True); time.sleep(60)", str(run.path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusyError, match=f"in use by another training \\(pid {holder.pid}\\)"):
            claim_run(run, fresh=True)
        with pytest.raises(RunBusyError):
            claim_run(run, fresh=False)  # a resume waits for it too
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    claim = claim_run(run, fresh=True)  # the kernel dropped the dead holder's lock
    claim.release()


def test_concurrent_trainings_with_one_name_do_not_share_the_folder(synth_root: Path, tmp_path: Path) -> None:
    # The first training holds the folder from before its model is built: the second one is refused at once.
    started, release = threading.Event(), threading.Event()

    def hold(step: int) -> None:
        started.set()
        release.wait(30)

    result: dict[str, object] = {}
    first = threading.Thread(target=lambda: result.update(run=train(tiny(synth_root, tmp_path, epochs=1),
                                                                     on_step=hold, progress=False)))
    first.start()
    try:
        assert started.wait(60)
        with pytest.raises(RunBusyError, match="in use by another training"):
            train(tiny(synth_root, tmp_path, epochs=1), progress=False)
    finally:
        release.set()
        first.join()
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert result["run"] == tmp_path / "run" and len(rows) == 1


def test_a_start_killed_before_its_first_checkpoint_can_start_again(synth_root: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    # What a start killed in epoch 1 leaves: the folder, its lock (dead owner), config, the tb and checkpoints folders.
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    run.tensorboard.mkdir()
    run.lock.write_text("999999999\n")
    run.config.write_text("model: simplenet\n")
    run.metrics.write_text("")
    (run.checkpoints / ".last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    with caplog.at_level(logging.WARNING, logger="miniplaces.rundir"):
        assert train(tiny(synth_root, tmp_path), progress=False) == run.path
    assert "holds no checkpoint" in caplog.text and "starting it again" in caplog.text
    assert load_checkpoint(run.last)["epoch"] == 2
    assert not list(run.checkpoints.glob("*.tmp"))
    # Now it holds a run: a fresh start with the same name is refused, naming the folder.
    with pytest.raises(RunExistsError, match=f"{run.path} already holds a run"):
        train(tiny(synth_root, tmp_path), progress=False)


def test_resume_of_a_start_without_checkpoint_says_start_it_again(synth_root: Path, tmp_path: Path) -> None:
    from miniplaces.engine.checkpoint import CheckpointError

    RunDir(tmp_path / "run").checkpoints.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint, so start it again"):
        train(tiny(synth_root, tmp_path), resume=tmp_path / "run", progress=False)


def test_stale_tmp_of_a_killed_checkpoint_write_goes_on_resume(synth_root: Path, tmp_path: Path) -> None:
    run = train(tiny(synth_root, tmp_path, epochs=1), progress=False)
    leftovers = [run / "checkpoints" / ".last.pt.abc123.tmp", run / "checkpoints" / ".best.pt.def456.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"\x80\x02 torn write")
    train(tiny(synth_root, tmp_path, epochs=2), resume=run, progress=False)
    assert not any(leftover.exists() for leftover in leftovers)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2


def _val_scores(bad_epochs: set[int], loss: float, top1: float = 100.0):  # type: ignore[no-untyped-def]
    """A patched `evaluate` whose results in `bad_epochs` (1-based calls) have `loss` and a tempting `top1`."""
    import miniplaces.workflows.train as workflow

    real = workflow.evaluate
    calls = {"n": 0}

    def evaluate(*args: object, **kwargs: object) -> dict:
        calls["n"] += 1
        scores = real(*args, **kwargs)  # type: ignore[arg-type]
        if calls["n"] in bad_epochs:
            scores = {**scores, "loss": loss, "top1": top1}
        return scores

    return evaluate


@pytest.mark.parametrize("loss", [math.nan, math.inf])
def test_a_val_epoch_with_non_finite_loss_is_never_best(loss: float, synth_root: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import miniplaces.workflows.train as workflow

    monkeypatch.setattr(workflow, "evaluate", _val_scores({1}, loss))
    run = train(tiny(synth_root, tmp_path), progress=False)
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == 2 and math.isfinite(best["metrics"]["val_loss"])
    assert best["best_top1"] == best["metrics"]["val_top1"] < 100.0


def test_a_run_whose_val_loss_never_is_finite_saves_no_best(synth_root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import miniplaces.workflows.train as workflow

    monkeypatch.setattr(workflow, "evaluate", _val_scores({1, 2}, math.nan))
    run = train(tiny(synth_root, tmp_path), progress=False)
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / "checkpoints" / "best.pt").exists()


def test_resume_applies_what_may_change_and_records_the_real_folder(synth_root: Path, tmp_path: Path) -> None:
    run = train(tiny(synth_root, tmp_path / "a", epochs=1), progress=False)
    moved = tmp_path / "b" / "moved"
    moved.parent.mkdir()
    run.rename(moved)
    changed = tiny(synth_root, tmp_path / "elsewhere", name="other", epochs=2, log_every=3, limit_val_batches=2,
                   tta="flip")
    train(changed, resume=moved, progress=False)
    saved = load_checkpoint(moved / "checkpoints" / "last.pt")["config"]
    assert (saved["epochs"], saved["log_every"], saved["limit_val_batches"], saved["tta"]) == (2, 3, 2, "flip")
    assert (saved["out_dir"], saved["name"]) == (str(tmp_path / "b"), "moved")
    assert not (tmp_path / "elsewhere").exists()
    assert torch.load(moved / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
