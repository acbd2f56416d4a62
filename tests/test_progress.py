"""Progress: the plain-line reporter on a fake clock, and what the commands print when stderr is not a terminal."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from miniplaces.cli import main
from miniplaces.data import read_categories
from miniplaces.data.synth import synthesize
from miniplaces.engine.checkpoint import describe_model, save_checkpoint
from miniplaces.errors import MiniPlacesError
from miniplaces.models import create_model
from miniplaces.progress import (
    INTERVAL_ENV,
    ProgressBar,
    ProgressLine,
    duration_text,
    prefixed,
    progress_interval,
    start_progress,
)

TORCH_THREADS = 1
FAST = ["--device", "cpu"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _reporter(total: int | None, interval: float) -> tuple[ProgressLine, FakeClock, io.StringIO]:
    clock, stream = FakeClock(), io.StringIO()
    return ProgressLine("attack", total, interval=interval, stream=stream, clock=clock), clock, stream


def test_lines_come_only_every_interval_and_the_final_line_always() -> None:
    reporter, clock, stream = _reporter(200, interval=30)
    for _ in range(5):  # 40 images every 10 s
        clock.now += 10
        reporter(40)
    assert stream.getvalue().splitlines() == ["attack: 120/200 images (60%), 4.0 img/s, ETA 20 s"]  # at 30 s only
    clock.now += 5
    reporter.close()
    reporter.close()  # a second close says nothing more
    lines = stream.getvalue().splitlines()
    assert lines[1:] == ["attack: done, 200 images in 55 s (3.6 img/s)"]


def test_the_eta_is_what_is_left_at_the_average_rate() -> None:
    reporter, clock, stream = _reporter(1000, interval=0)
    clock.now += 60
    reporter(150)  # 2.5 img/s; 850 left → 340 s
    clock.now += 60
    reporter(150)  # still 2.5 img/s; 700 left → 280 s
    assert stream.getvalue().splitlines() == [
        "attack: 150/1000 images (15%), 2.5 img/s, ETA 5 min 40 s",
        "attack: 300/1000 images (30%), 2.5 img/s, ETA 4 min 40 s",
    ]


def test_an_unknown_total_and_a_slow_rate() -> None:
    reporter, clock, stream = _reporter(None, interval=0)
    clock.now += 120
    reporter(3)  # 0.025 img/s: shown per minute
    assert stream.getvalue() == "attack: 3 images, 1.5 img/min\n"


@pytest.mark.parametrize(("seconds", "text"), [(0, "0 s"), (38.4, "38 s"), (59.6, "1 min 00 s"), (380, "6 min 20 s"),
                                               (7500, "2 h 05 min")])
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_interval_from_the_environment() -> None:
    assert progress_interval({}) == 30.0
    assert progress_interval({INTERVAL_ENV: "0"}) == 0.0
    assert progress_interval({INTERVAL_ENV: " 2.5 "}) == 2.5
    for bad in ("soon", "-1", "inf"):
        with pytest.raises(MiniPlacesError, match=f"{INTERVAL_ENV}='{re.escape(bad)}' is not a number"):
            progress_interval({INTERVAL_ENV: bad})


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_and_lines_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "7")
    terminal = _Terminal()
    with start_progress("eval", 10, stream=terminal) as advance:
        assert isinstance(advance, ProgressBar)
        advance(10)
        assert advance.bar.n == 10
    assert "eval:   0%" in terminal.getvalue() and "/10 [" in terminal.getvalue()  # tqdm drew its bar there
    plain = io.StringIO()
    with start_progress("eval", 10, stream=plain) as advance:
        assert isinstance(advance, ProgressLine) and advance.interval == 7
        advance(10)
    assert plain.getvalue().startswith("eval: done, 10 images in ")


def test_prefixed_names_the_task() -> None:
    opened: list[tuple[str, int | None]] = []

    def start(label: str, total: int | None) -> Any:
        opened.append((label, total))
        return start_progress(label, total, stream=io.StringIO())

    shown = prefixed(start, "simplenet")
    assert shown is not None and prefixed(None, "x") is None
    with shown("eval", 3):
        pass
    assert opened == [("simplenet eval", 3)]


# ---------------------------------------------------------------- the commands, with stderr captured (not a tty)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("simplenet", num_classes=4)
    path = tmp_path_factory.mktemp("run") / "runs" / "tiny" / "checkpoints" / "last.pt"
    return save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(),
                            "categories": read_categories(synth_root), "config": {"image_size": 32}}, path)


@pytest.fixture(autouse=True)
def _every_update(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "0")


def _counts(stderr: str, label: str) -> tuple[list[int], int, str]:
    """The counts of `label`'s progress lines, their total, and the final line."""
    found = [re.fullmatch(rf"{label}: (\d+)/(\d+) images \(\d+%\), [\d.]+ img/(s|min)(, ETA .*)?", line)
             for line in stderr.splitlines() if line.startswith(f"{label}: ") and "done" not in line]
    assert found and all(found), stderr
    totals = {int(m.group(2)) for m in found if m}
    assert len(totals) == 1, stderr
    final = [line for line in stderr.splitlines() if line.startswith(f"{label}: done, ")]
    assert len(final) == 1, stderr
    return [int(m.group(1)) for m in found if m], totals.pop(), final[0]


def _rising_to(counts: list[int], total: int) -> None:
    assert counts == sorted(set(counts)) and counts[-1] == total


@pytest.mark.parametrize(("eps", "sweep", "passes"), [("4/255", "0,2/255,4/255", 3), ("6/255", "0,2/255", 3),
                                                     ("6/255", None, 1)])
def test_attack_prints_progress_lines_rising_to_every_pass(checkpoint: Path, synth_root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str], eps: str,
                                                          sweep: str | None, passes: int) -> None:
    args = ["attack", "--checkpoint", str(checkpoint), "--root", str(synth_root), "--mode", "untargeted",
            "--eps", eps, "--steps", "1", "--limit", "6", "--batch-size", "4", "--grid", "2",
            "--out", str(tmp_path), *FAST]
    assert main(args + (["--sweep", sweep] if sweep else [])) == 0
    captured = capsys.readouterr()
    counts, total, final = _counts(captured.err, "attack")
    assert total == 6 * passes  # the attack at ε is the sweep's row when ε is in it
    assert counts == [n for p in range(passes) for n in (6 * p + 4, 6 * p + 6)]  # batches of 4 and 2
    assert final.startswith(f"attack: done, {total} images in ")
    assert "attack: " not in captured.out  # progress is on stderr, the results on stdout


def test_eval_prints_progress_lines(checkpoint: Path, synth_root: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--checkpoint", str(checkpoint), "--root", str(synth_root), "--workers", "0",
                 "--batch-size", "6", "--out", str(tmp_path / "e.json"), *FAST]) == 0
    counts, total, _ = _counts(capsys.readouterr().err, "eval")
    assert total == 16 and counts == [6, 12, 16]  # the 16 val images in batches of 6


def test_eval_limit_caps_the_total(checkpoint: Path, synth_root: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--checkpoint", str(checkpoint), "--root", str(synth_root), "--workers", "0",
                 "--batch-size", "4", "--limit", "5", "--out", str(tmp_path / "e.json"), *FAST]) == 0
    counts, total, _ = _counts(capsys.readouterr().err, "eval")
    assert total == 8 and counts == [4, 8]  # 5 images rounded up to whole batches


def test_saliency_prints_progress_per_batch(checkpoint: Path, synth_root: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["saliency", "--checkpoint", str(checkpoint), "--root", str(synth_root), "--split", "train",
                 "--n", "40", "--out", str(tmp_path), *FAST]) == 0
    counts, total, _ = _counts(capsys.readouterr().err, "saliency")
    assert total == 40 and counts == [16, 32, 40]


def test_saliency_in_batches_equals_one_pass(checkpoint: Path, synth_root: Path) -> None:
    from miniplaces.workflows.analysis import load_for_analysis, saliency_report

    inputs = load_for_analysis(checkpoint, synth_root, split="train")
    one = saliency_report(inputs, checkpoint.parent / "one", n=10, batch_size=10)
    split = saliency_report(inputs, checkpoint.parent / "split", n=10, batch_size=3)
    assert one.predicted == split.predicted and one.correct == split.correct
    assert one.path.read_bytes() == split.path.read_bytes()


def test_predict_prints_progress(checkpoint: Path, synth_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = sorted((synth_root / "images" / "val").rglob("*.jpg"))[:3]
    assert main(["predict", *map(str, images), "--checkpoint", str(checkpoint), "--batch-size", "2", *FAST]) == 0
    counts, total, _ = _counts(capsys.readouterr().err, "predict")
    assert total == 3 and counts == [2, 3]


def test_predict_challenge_prints_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = synthesize(tmp_path / "data", classes=5, per_class=1, val_per_class=1, test_count=5, image_size=32)
    model = create_model("simplenet", num_classes=5)  # the challenge file names 5 classes
    path = save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(),
                            "categories": read_categories(root), "config": {"image_size": 32}}, tmp_path / "m.pt")
    assert main(["predict", "--checkpoint", str(path), "--challenge", "--root", str(root),
                 "--out", str(tmp_path / "c.txt"), "--batch-size", "2", "--workers", "0", *FAST]) == 0
    counts, total, _ = _counts(capsys.readouterr().err, "predict")
    assert total == 5 and counts == [2, 4, 5]


def test_a_failed_task_prints_no_final_line(checkpoint: Path, synth_root: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # A 4-class model cannot fill the challenge file's 5 labels per image: the task fails inside.
    assert main(["predict", "--checkpoint", str(checkpoint), "--challenge", "--root", str(synth_root),
                 "--out", str(tmp_path / "c.txt"), "--workers", "0", *FAST]) == 2
    err = capsys.readouterr().err
    assert "done" not in err and err.startswith("error: the challenge file lists 5 labels")


def test_cache_build_and_verify_print_progress(synth_root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    common = ["cache", "--root", str(synth_root), "--split", "val", "--image-size", "16", "--cache-dir", str(tmp_path),
              "--workers", "1"]
    assert main(common) == 0
    counts, total, _ = _counts(capsys.readouterr().err, "cache val")
    _rising_to(counts, 16)
    assert total == 16
    assert main([*common, "--verify"]) == 0
    counts, total, _ = _counts(capsys.readouterr().err, "verify val")
    _rising_to(counts, 16)
    assert total == 16


def test_a_bad_interval_is_one_error_line_before_anything_is_written(synth_root: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INTERVAL_ENV, "often")
    assert main(["cache", "--root", str(synth_root), "--split", "val", "--image-size", "16",
                 "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {INTERVAL_ENV}='often' is not a number of seconds ≥ 0; set it to e.g. 30, or 0 for a " \
                  "line at every update\n"
    assert not any((tmp_path / "c").rglob("*"))


def test_study_steps_open_named_tasks(synth_root: Path, tmp_path: Path) -> None:
    from miniplaces.study import Scale
    from miniplaces.workflows.study import plan_study, run_study

    tiny = Scale(name="tiny", description="tests",
                 config={"image_size": 16, "batch_size": 8, "warmup_epochs": 0.0, "workers": 0, "log_every": 1,
                         "limit_train_batches": 1},
                 experiments={"simplenet": {"epochs": 1}}, eval_images=None, attack_images=4, saliency_images=2,
                 threads=1)
    plan = plan_study(synth_root, tmp_path / "study", scale=tiny, experiments=["simplenet"], device="cpu")
    tasks: list[tuple[str, int | None, int]] = []

    class Recorder:
        def __init__(self, label: str, total: int | None) -> None:
            self.label, self.total, self.done = label, total, 0

        def __call__(self, n: int) -> None:
            self.done += n

        def __enter__(self) -> Callable[[int], None]:
            return self

        def __exit__(self, *exc: object) -> None:
            tasks.append((self.label, self.total, self.done))

    run_study(plan, progress=False, step_progress=Recorder)
    assert tasks == [("simplenet eval", 16, 16), ("simplenet attack", 4, 4), ("simplenet saliency", 2, 2)]
