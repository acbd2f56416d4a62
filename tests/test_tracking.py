"""Experiment trackers (issue 22): each one is driven as the training workflow drives it, then what the tracker
itself stored is read back with its own reader (MLflow's client, TensorBoard's event reader, W&B's run log)."""

from __future__ import annotations

import builtins
import csv
import json
from pathlib import Path
from typing import Any

import pytest
from tracker_readers import wandb_records

from miniplaces.records import MetricsRow
from miniplaces.rundir import RunDir
from miniplaces.tracking import (
    Tracker,
    TrackerError,
    TrackerGroup,
    check_trackers,
    epoch_line,
    final_numbers,
    flat_params,
    open_trackers,
    read_tracker_ids,
)

PARAMS = {"model": "simplenet", "lr": 0.1, "epochs": 2, "model_kwargs": {"depth": 3}, "weight_decay": None}


def _row(epoch: int, top1: float, ema: float | None = None) -> MetricsRow:
    return MetricsRow(epoch=epoch, train_loss=2.0 / epoch, train_top1=top1 - 1, train_top5=top1 + 10,
                      val_loss=2.5 / epoch, val_top1=top1, val_top5=top1 + 20, lr=0.1 / epoch, epoch_time_s=3.0,
                      images_per_s=100.0, peak_memory_mb=50.0, peak_memory_kind="rss",
                      val_loss_ema=None if ema is None else 2.4 / epoch, val_top1_ema=ema,
                      val_top5_ema=None if ema is None else ema + 20)


def _drive(names: list[str], run: RunDir, *, epochs: tuple[int, ...] = (1, 2), steps_per_epoch: int = 3,
           rows: list[MetricsRow] | None = None, finish: bool = True) -> list[MetricsRow]:
    """What the training workflow does with its trackers: start, steps and epochs, finish, close."""
    rows = list(rows or [])
    best = run.best
    best.parent.mkdir(parents=True, exist_ok=True)
    best.write_bytes(b"weights")
    done_epochs = epochs[0] - 1
    trackers = open_trackers(names, run, out_dir=run.path.parent, kept=rows, resumed_epoch=done_epochs,
                             resumed_step=done_epochs * steps_per_epoch)
    try:
        for tracker in trackers:
            tracker.start(flat_params(PARAMS))
        for epoch in epochs:
            for step in range(steps_per_epoch):
                global_step = (epoch - 1) * steps_per_epoch + step
                for tracker in trackers:
                    tracker.log_step(global_step, {"loss": 3.0 - 0.1 * global_step, "lr": 0.1})
            rows.append(_row(epoch, 10.0 * epoch))
            for tracker in trackers:
                tracker.log_epoch(rows[-1], rows, epoch * steps_per_epoch)
        if finish:
            for tracker in trackers:
                tracker.finish(final_numbers(rows), best)
    finally:
        for tracker in trackers:
            tracker.close()
    return rows


def test_flat_params_and_final_numbers_follow_the_weights_best_pt_holds() -> None:
    assert flat_params(PARAMS) == {"model": "simplenet", "lr": 0.1, "epochs": 2, "model_kwargs.depth": 3,
                                   "weight_decay": "null"}
    raw = [_row(1, 30.0), _row(2, 20.0)]
    assert final_numbers(raw)["best/top1"] == 30.0 and final_numbers(raw)["best/epoch"] == 1.0
    ema = [_row(1, 30.0, ema=5.0), _row(2, 20.0, ema=25.0)]  # best.pt follows the EMA's score
    assert (final_numbers(ema)["best/top1"], final_numbers(ema)["best/epoch"]) == (25.0, 2.0)


def test_unknown_repeated_and_missing_trackers_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TrackerError, match="unknown tracker 'neptune'"):
        check_trackers(["tensorboard", "neptune"])
    with pytest.raises(TrackerError, match="twice"):
        check_trackers(["csv", "csv"])
    real_import = builtins.__import__

    def no_trackers(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] in ("mlflow", "wandb"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_trackers)
    for name in ("mlflow", "wandb"):
        monkeypatch.delitem(__import__("sys").modules, name, raising=False)
        with pytest.raises(TrackerError, match=rf"pip install 'miniplaces\[{name}\]'"):
            check_trackers([name])


def test_csv_rewrites_the_rows_and_drops_those_a_resume_repeats(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    rows = _drive(["csv"], run)
    with open(run.metrics_csv, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert [float(r["val_top1"]) for r in read] == [row.val_top1 for row in rows] == [10.0, 20.0]
    # Resumed after epoch 1: the file holds epoch 1 as kept, then the epochs trained again.
    _drive(["csv"], run, epochs=(2,), rows=rows[:1])
    with open(run.metrics_csv, newline="") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2]


def test_tensorboard_holds_epoch_and_step_scalars_and_the_hparams(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir(tmp_path / "r")
    _drive(["tensorboard"], run)
    epochs = EventAccumulator(str(run.tensorboard)).Reload()
    assert [(e.step, e.value) for e in epochs.Scalars("val/top1")] == [(1, 10.0), (2, 20.0)]
    assert [e.value for e in epochs.Scalars("hparam/best/top1")] == [20.0]
    hparams = epochs.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in hparams
    assert b"simplenet" in hparams["_hparams_/session_start_info"]
    steps = EventAccumulator(str(run.tensorboard_steps)).Reload()
    assert [e.step for e in steps.Scalars("step/loss")] == list(range(6))


def test_mlflow_stores_params_metrics_and_the_best_checkpoint_and_a_resume_continues_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = RunDir(tmp_path / "runs" / "r")
    rows = _drive(["mlflow"], run, epochs=(1,), finish=False)  # interrupted after epoch 1
    first_id = read_tracker_ids(run)["mlflow"]
    _drive(["mlflow"], run, epochs=(2,), rows=rows)  # resumed: the same MLflow run
    assert read_tracker_ids(run)["mlflow"] == first_id
    assert (tmp_path / "mlruns").is_dir()  # the default store: mlruns/ beside the runs folder
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    stored = client.get_run(first_id)
    assert stored.info.run_name == "r" and stored.info.status == "FINISHED"
    assert stored.data.params["model"] == "simplenet" and stored.data.params["model_kwargs.depth"] == "3"
    assert [(m.step, m.value) for m in client.get_metric_history(first_id, "val/top1")] == [(3, 10.0), (6, 20.0)]
    assert [m.step for m in client.get_metric_history(first_id, "step/loss")] == list(range(6))
    assert stored.data.metrics["best/top1"] == 20.0
    assert [a.path for a in client.list_artifacts(first_id, "checkpoints")] == ["checkpoints/best.pt"]


def test_wandb_offline_stores_params_metrics_and_the_best_checkpoint(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = RunDir(tmp_path / "r")
    _drive(["wandb"], run)
    records = wandb_records(run)
    kinds = [r.WhichOneof("record_type") for r in records]
    config = {u.key: json.loads(u.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["model"] == "simplenet" and config["model_kwargs.depth"] == 3
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["val/top1"] for h in history if "val/top1" in h] == [10.0, 20.0]
    assert [h["_step"] for h in history if "step/loss" in h] == list(range(6))
    summary = {"/".join(u.nested_key) or u.key: json.loads(u.value_json) for r in records
               if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
    assert summary["best/top1"] == 20.0
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [(a.name, a.type) for a in artifacts] == [("r-best", "model")]
    assert "run" in kinds and read_tracker_ids(run)["wandb"]


def test_log_to_is_a_checked_list_key(synth_root: Path) -> None:
    from miniplaces.config import ConfigError, load_config, resolve

    config = resolve(load_config(None, [f"root={synth_root}", "model=simplenet", "log_to=[csv, mlflow]"]))
    assert config.log_to == ["csv", "mlflow"]
    assert load_config(None, []).log_to == ["tensorboard", "csv"]
    with pytest.raises(ConfigError, match="log_to"):
        load_config(None, ["log_to=[tensorboard, neptune]"])
    with pytest.raises(ConfigError, match="log_to"):
        load_config(None, ["log_to=tensorboard"])
    with pytest.raises(TrackerError, match="twice"):
        resolve(load_config(None, [f"root={synth_root}", "model=simplenet", "log_to=[csv, csv]"]))


def test_a_group_closes_every_tracker_when_one_fails_to_close() -> None:
    closed: list[str] = []

    class Closing(Tracker):
        def __init__(self, name: str, fail: bool) -> None:
            self.name, self.fail = name, fail

        def close(self) -> None:
            closed.append(self.name)
            if self.fail:
                raise OSError(f"{self.name} failed")

    with pytest.raises(OSError, match="a failed"):
        with TrackerGroup([Closing("a", True), Closing("b", False), Closing("c", True)]):
            pass
    assert closed == ["a", "b", "c"]


def test_the_epoch_line_with_the_run_eta() -> None:
    rows = [_row(1, 10.0), _row(2, 20.0)]  # 3 s each
    line = epoch_line(rows[-1], rows, 12, best=True)
    assert line.startswith("epoch 2/12  train loss 1.0000 top1 19.00  val loss 1.2500 top1 20.00 top5 40.00")
    assert line.endswith("(best)  run ETA 30 s")  # 10 epochs left × 3 s
    assert "ETA" not in epoch_line(rows[-1], rows, 2, best=False)
