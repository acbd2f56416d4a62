"""Training with its trackers, its text log and its progress (issue 22), end to end on tiny runs: what MLflow,
W&B and TensorBoard stored is read back with their own readers, and what the run said is read from its log."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from tiny_runs import config, interrupt_at_step, rows, tiny_dataset
from tracker_readers import wandb_records

from miniplaces.errors import MiniPlacesError
from miniplaces.rundir import RunDir
from miniplaces.workflows.train import TrainingInterrupted, train

STEPS = 3  # per epoch: tiny_runs' limit_train_batches


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("tracking_synth"))


def tiny(data: Path, out: Path, **changes: object):
    return config(data, out, limit_val_batches=1, **changes)


def best_row(run: Path) -> dict:
    return max(rows(run), key=lambda r: r["val_top1"])  # max keeps the first of equals, as best.pt does


def test_mlflow_run_reads_back_params_curves_final_numbers_and_best_pt(data: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = train(tiny(data, tmp_path / "runs", log_to=["mlflow"], log_every=1), progress=False)
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())  # the default: mlruns/ beside runs/
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    stored = client.get_run(run_id)
    assert stored.info.run_name == "run" and stored.info.status == "FINISHED"
    assert stored.data.params["model"] == "simplenet" and stored.data.params["batch_size"] == "16"
    assert stored.data.params["log_to"] == '["mlflow"]'
    epochs = rows(run)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/top1")] == \
        [(STEPS * r["epoch"], pytest.approx(r["val_top1"])) for r in epochs]
    assert [m.step for m in client.get_metric_history(run_id, "step/loss")] == list(range(1, 2 * STEPS + 1))
    assert stored.data.metrics["best/top1"] == pytest.approx(best_row(run)["val_top1"])
    assert stored.data.metrics["best/epoch"] == best_row(run)["epoch"]
    (artifact,) = client.list_artifacts(run_id, "checkpoints")
    local = client.download_artifacts(run_id, artifact.path, str(tmp_path / "download"))
    assert Path(local).read_bytes() == (run / "checkpoints" / "best.pt").read_bytes()
    # Only the trackers of log_to: no TensorBoard events, no metrics.csv.
    assert not (run / "tb").exists() and not (run / "metrics.csv").exists()


def test_wandb_offline_run_reads_back_params_curves_and_final_numbers(data: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = train(tiny(data, tmp_path, log_to=["wandb"], log_every=1), progress=False)
    records = wandb_records(RunDir(run))
    params = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert params["model"] == "simplenet" and params["epochs"] == 2 and params["log_to"] == '["wandb"]'
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["val/top1"] for h in history if "val/top1" in h] == pytest.approx([r["val_top1"] for r in rows(run)])
    assert [h["_step"] for h in history if "step/loss" in h] == list(range(1, 2 * STEPS + 1))
    summary = {"/".join(u.nested_key) or u.key: json.loads(u.value_json) for r in records
               if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
    assert summary["best/top1"] == pytest.approx(best_row(run)["val_top1"])
    assert [(a.name, a.type) for a in (r.artifact for r in records if r.WhichOneof("record_type") == "artifact")] \
        == [("run-best", "model")]


@pytest.fixture(scope="module")
def default_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[logging.LogRecord]]:
    """A run with the default trackers, interrupted in epoch 1 and resumed, with what it logged."""
    out = tmp_path_factory.mktemp("default")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("miniplaces").addHandler(handler)

    try:
        with pytest.raises(TrainingInterrupted):
            train(tiny(data, out, ema=True, ema_decay=0.5), on_step=interrupt_at_step(2), progress=False)
        run = train(tiny(data, out, ema=True, ema_decay=0.5), resume=out / "run", progress=False)
    finally:
        logging.getLogger("miniplaces").removeHandler(handler)
    return run, records


def test_train_log_has_every_line_with_its_time_across_the_resume(default_run: tuple[Path, list]) -> None:
    run, records = default_run
    lines = (run / "train.log").read_text().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) ", line) for line in lines)
    text = [line.split(" ", 3)[3] for line in lines]
    # The first start (stopped by the signal), then the resume appended to the same file.
    assert sum(t.startswith("run ") for t in text) == 2
    assert any(t.startswith("stopped: interrupted in epoch 1 after step 2/3") for t in text)
    assert [t.split()[1] for t in text if t.startswith("epoch ") and "  train loss " in t] == ["1/2", "2/2"]
    assert [t for t in text if not t.startswith("stopped: ")] == [r.getMessage() for r in records]


def test_resume_message_and_summary(default_run: tuple[Path, list]) -> None:
    run, records = default_run
    said = [r.getMessage() for r in records]
    assert "resuming at epoch 1, step 2/3" in said
    best = max(rows(run), key=lambda r: r["val_top1_ema"])  # an EMA run: best.pt follows the EMA's score
    summary = said[-3:]
    assert summary[0] == (f"best epoch {best['epoch']}/2: val top-1 {best['val_top1_ema']:.2f}  top-5 "
                          f"{best['val_top5_ema']:.2f} (EMA weights, as best.pt holds them)")
    speed = sum(r["images_per_s"] for r in rows(run)) / 2
    assert re.fullmatch(rf"total time \d[\d hmins]* over 2 epochs  {speed:.0f} img/s in training  peak memory "
                        rf"{max(r['peak_memory_mb'] for r in rows(run)):.0f} MB \(cpu_max_rss\)", summary[1])
    folder = run / "checkpoints"
    assert summary[2] == f"checkpoints: {folder / 'best.pt'} (best), {folder / 'last.pt'} (last)"


def test_tensorboard_has_the_hparams_with_the_final_numbers(default_run: tuple[Path, list]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = default_run
    events = EventAccumulator(str(run / "tb")).Reload()
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(hparams)
    assert b"simplenet" in hparams["_hparams_/session_start_info"]
    best = max(rows(run), key=lambda r: r["val_top1_ema"])
    assert [e.value for e in events.Scalars("hparam/best/top1")] == [pytest.approx(best["val_top1_ema"])]
    assert [e.step for e in events.Scalars("val/top1")] == [1, 2]  # the curves beside them, once per epoch


def test_off_a_terminal_training_prints_progress_lines_at_the_interval(data: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    # pytest captures stderr, so it is not a terminal here: plain lines, not a bar.
    monkeypatch.setenv("MINIPLACES_PROGRESS_INTERVAL", "0")
    with caplog.at_level(logging.INFO, logger="miniplaces"):
        train(tiny(data, tmp_path / "a", log_every=1), progress=True)
    lines = [r.getMessage() for r in caplog.records if ": step " in r.getMessage()]
    # A line at every check point (log_every=1), since the interval is 0.
    assert [line.split("  ")[0] for line in lines] == [f"epoch {e} train: step {s}/3" for e in (1, 2)
                                                       for s in (1, 2, 3)]
    assert all(re.search(r"ETA \d[\d hmins]* \(epoch\), \d[\d hmins]* \(run\)$", line) for line in lines)
    caplog.clear()
    monkeypatch.setenv("MINIPLACES_PROGRESS_INTERVAL", "3600")
    with caplog.at_level(logging.INFO, logger="miniplaces"):
        train(tiny(data, tmp_path / "b", log_every=1, epochs=1), progress=True)
    assert not [r for r in caplog.records if ": step " in r.getMessage()]
    monkeypatch.setenv("MINIPLACES_PROGRESS_INTERVAL", "soon")
    with pytest.raises(MiniPlacesError, match="MINIPLACES_PROGRESS_INTERVAL='soon' is not a number"):
        train(tiny(data, tmp_path / "c", epochs=1), progress=True)
    assert not (tmp_path / "c").exists()  # said before anything is written


def test_a_resume_may_add_a_tracker(data: Path, tmp_path: Path) -> None:
    """log_to may change on resume: the CSV tracker added at epoch 1 holds the rows of both epochs."""
    first = train(tiny(data, tmp_path / "runs", epochs=1, log_to=["tensorboard"]), progress=False)
    assert not (first / "metrics.csv").exists()
    run = train(tiny(data, tmp_path / "runs", epochs=2, log_to=["tensorboard", "csv"]), resume=first,
                progress=False)
    lines = (run / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2"]
