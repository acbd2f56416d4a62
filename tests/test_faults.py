"""Training killed with SIGKILL at chosen and random points (issue 12) always resumes or restarts, and ends
bit-identical to a run never interrupted.

Each attempt is a subprocess running `driver.py` below: it trains the same tiny run and prints a marker
at every step and inside every checkpoint write (`save-half`: half of the file written, not yet renamed;
`saved`: renamed), pausing briefly so that the SIGKILL lands there. The next attempt resumes when
`last.pt` exists and starts the run again under the same name when it does not.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from miniplaces.config import TrainConfig, to_dict
from miniplaces.engine.checkpoint import load_checkpoint
from miniplaces.workflows.train import train

TORCH_THREADS = 1

DRIVER = r'''
import io, json, sys, time
from pathlib import Path

import torch

torch.set_num_threads(1)
import miniplaces.engine.checkpoint as checkpoint
from miniplaces.config import config_from_dict
from miniplaces.engine.resume import resume_config
from miniplaces.workflows.train import train

config = config_from_dict(json.loads(sys.argv[1]))
run = Path(config.out_dir) / config.name
PAUSE = 0.1  # a marker waits this long, so that the parent's SIGKILL arrives while the child is there


def say(marker):
    print(marker, flush=True)
    time.sleep(PAUSE)


real_atomic_write = checkpoint.atomic_write


def torn_atomic_write(path, write):
    def halves(handle):
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        handle.write(data[: len(data) // 2])
        handle.flush()
        say(f"save-half {Path(path).name}")
        handle.write(data[len(data) // 2 :])

    done = real_atomic_write(path, halves)
    say(f"saved {Path(path).name}")
    return done


checkpoint.atomic_write = torn_atomic_write
steps = iter(range(1, 10**6))
on_step = lambda step: say(f"step {next(steps)}")
if (run / "checkpoints" / "last.pt").is_file():
    say("resume")
    train(resume_config(run), resume=run, on_step=on_step, progress=False)
else:
    say("start")
    train(config, on_step=on_step, progress=False)
say("done")
'''


def tiny(root: Path, out: Path) -> TrainConfig:
    # 3 epochs × 3 steps of 16 images, 32 px: a few seconds per attempt, most of it importing torch.
    return TrainConfig(root=str(root), out_dir=str(out), name="run", epochs=3, batch_size=16, lr=0.05,
                       warmup_epochs=1, workers=0, image_size=32, device="cpu", log_every=1, limit_train_batches=3,
                       limit_val_batches=1, seed=3)


def attempt(driver: Path, config: TrainConfig, kill_at: str | int | None) -> list[str]:
    """Run the driver until it prints the marker `kill_at`, or its `kill_at`-th marker, then SIGKILL it;
    or, for None, until it ends. Returns the markers it printed."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    child = subprocess.Popen([sys.executable, str(driver), json.dumps(to_dict(config))], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    seen: list[str] = []
    killed = False
    for line in child.stdout:
        seen.append(line.strip())
        if kill_at is not None and (seen[-1] == kill_at or len(seen) == kill_at):
            child.send_signal(signal.SIGKILL)
            killed = True
            break
    child.wait(timeout=120)
    stderr = child.stderr.read() if child.stderr else ""
    if killed:
        assert child.returncode == -signal.SIGKILL, (kill_at, seen, stderr)
    else:
        assert child.returncode == 0 and seen[-1] == "done", (kill_at, seen, stderr)
        assert kill_at is None or isinstance(kill_at, int), (kill_at, seen)  # a named marker must be reached
    return seen


def rows(run: Path) -> list[dict]:
    timing = {"epoch_time_s", "images_per_s", "peak_memory_mb"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run never interrupted."""
    return train(tiny(synth_root, tmp_path_factory.mktemp("reference")), progress=False)


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_or_restart_ends_bit_identical(synth_root: Path, reference: Path,
                                                                    tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    config = tiny(synth_root, tmp_path / "faulty")
    run = Path(config.out_dir) / "run"
    last = run / "checkpoints" / "last.pt"
    pick = random.Random(12)
    # Markers count within one attempt; step k of an attempt that resumed at epoch e is step 3e + k of the run.
    kills = [
        "step 2",  # before the first checkpoint: the folder exists, nothing to resume
        "saved best.pt",  # epoch 1's best.pt written, its last.pt not yet: nothing to resume, restart allowed
        "save-half last.pt",  # the first last.pt half written: still nothing to resume, a torn .tmp left
        f"step {pick.randint(4, 6)}",  # in epoch 2 of a fresh start: resume from epoch 1
        "save-half last.pt",  # epoch 2's last.pt torn (its best.pt may be written): last.pt still epoch 1's
        "saved last.pt",  # both of epoch 2's checkpoints written
        f"step {pick.randint(1, 3)}",  # in the epoch after a resume
    ]
    history = []
    for kill_at in kills:
        history.append((kill_at, "resume" if last.is_file() else "restart"))
        seen = attempt(driver, config, kill_at)
        assert seen[0] == history[-1][1].replace("restart", "start")
        if last.is_file():  # whatever the moment of the kill, the checkpoint on disk is whole
            assert load_checkpoint(last)["epoch"] >= 1
    assert [how for _, how in history] == ["restart"] * 4 + ["resume"] * 3
    attempt(driver, config, None)
    final, expected = load_checkpoint(last), load_checkpoint(reference / "checkpoints" / "last.pt")
    assert final["epoch"] == 3 and final["step"] == expected["step"] == 9
    for key, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    for key, value in expected["optimizer"]["state"].items():
        assert torch.equal(final["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"])
    assert rows(run) == rows(reference)
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == load_checkpoint(
        reference / "checkpoints" / "best.pt")["epoch"]
    assert not list(run.rglob("*.tmp"))


@pytest.mark.slow
def test_random_kill_times_with_a_fixed_seed_always_recover(synth_root: Path, reference: Path,
                                                            tmp_path: Path) -> None:
    # Kill after a random number of markers (steps, halves of checkpoint writes, renames), three times.
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    config = tiny(synth_root, tmp_path / "faulty")
    pick = random.Random(2026)
    run = Path(config.out_dir) / "run"
    for _ in range(3):
        attempt(driver, config, pick.randint(2, 12))  # a whole run prints 23 markers
    attempt(driver, config, None)
    final, expected = load_checkpoint(run / "checkpoints" / "last.pt"), load_checkpoint(
        reference / "checkpoints" / "last.pt")
    for key, value in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key
    assert rows(run) == rows(reference) and not list(run.rglob("*.tmp"))
