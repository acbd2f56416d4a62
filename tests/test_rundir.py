"""The run folder: one atomic write (all or nothing, stale temporary files cleaned up), its paths, and records
that read back what they write."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from miniplaces.fileio import atomic_write, atomic_write_json, atomic_write_text
from miniplaces.records import (
    METRIC_KEYS,
    AttackResult,
    AttackSource,
    ClassAccuracy,
    EvalResult,
    MetricsRow,
    RunFileError,
    Sweep,
    read_metrics,
    write_metrics,
    write_metrics_csv,
)
from miniplaces.rundir import RunDir


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_tmp(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def broken(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_stale_tmp_from_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "last.pt"
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"x" * 100)
    other = tmp_path / ".best.pt.abc123.tmp"  # another target's temp file is not ours to remove
    other.write_bytes(b"y")
    atomic_write_text(target, "new")
    assert not stale.exists()
    assert other.exists()


def test_run_dir_names_every_file_of_a_run(tmp_path):
    run = RunDir(tmp_path / "runs" / "a")
    assert run.last == tmp_path / "runs" / "a" / "checkpoints" / "last.pt"
    assert run.eval_json("val") == run.checkpoints / "eval_val.json"
    assert run.attack.result == run.path / "attack" / "attack.json" and run.attack.sweep.name == "sweep.json"
    assert RunDir.of_checkpoint(run.best) == RunDir(run.path.resolve()) and not run.is_run()
    write_metrics(run.metrics, [])
    assert run.is_run() and run.holds_training() and read_metrics(run.metrics) == []


def test_records_read_back_what_they_write(tmp_path):
    row = MetricsRow(epoch=1, train_loss=2.0, train_top1=10.0, train_top5=50.0, val_loss=2.1, val_top1=12.5,
                     val_top5=55.0, lr=0.1, epoch_time_s=3.0, images_per_s=100.0, peak_memory_mb=500.0,
                     peak_memory_kind="cpu_max_rss")
    write_metrics(tmp_path / "metrics.jsonl", [row, row])
    assert read_metrics(tmp_path / "metrics.jsonl") == [row, row]
    assert list(json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])) == list(METRIC_KEYS)

    source = AttackSource(checkpoint="c.pt", root="data", split="val", image_size=32,
                          model={"name": "simplenet", "kwargs": {}}, limit=100, seed=0)
    scores = {"mode": "fgsm", "eps": 4 / 255, "steps": 1, "images": 16, "clean_top1": 50.0, "clean_top5": 90.0,
              "adv_top1": 10.0, "adv_top5": 60.0, "success_rate": 80.0, "success_definition": "d",
              "mean_linf": 4 / 255, "mean_l2": 0.5}
    attack = AttackResult.from_scores(scores, source)
    assert attack.settings == {"mode": "fgsm", "eps": 4 / 255, "steps": 1} and attack.images == 16
    assert AttackResult.read(attack.write(tmp_path / "attack.json")) == attack
    assert json.loads((tmp_path / "attack.json").read_text()) == {**scores, **dataclasses.asdict(source)}
    sweep = Sweep([AttackResult.from_scores(scores)], source)
    assert Sweep.read(sweep.write(tmp_path / "sweep.json")) == sweep

    result = EvalResult(checkpoint="c.pt", model={"name": "simplenet", "kwargs": {}}, epoch=2, split="val",
                        tta=None, image_size=32, count=2, top1=50.0, top5=100.0, loss=0.7,
                        per_class=[ClassAccuracy("a", 100.0, 1), ClassAccuracy("b", 0.0, 1)],
                        confusion=[[1, 0], [1, 0]])
    assert EvalResult.read(result.write(tmp_path / "eval_val.json")) == result
    assert json.loads((tmp_path / "eval_val.json").read_text())["per_class"][0] == {
        "class": "a", "accuracy": 100.0, "count": 1}


def test_a_file_that_is_not_the_record_is_named(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(RunFileError, match=r"metrics.jsonl:1: .*train_loss"):
        read_metrics(tmp_path / "metrics.jsonl")
    (tmp_path / "attack.json").write_text("[1, 2]")
    with pytest.raises(RunFileError, match="attack.json holds no JSON object"):
        AttackResult.read(tmp_path / "attack.json")
    (tmp_path / "sweep.json").write_text('{"eps": [0.1]}')
    with pytest.raises(RunFileError, match="sweep.json: no list of rows"):
        Sweep.read(tmp_path / "sweep.json")


def test_metrics_csv_holds_the_rows_of_the_jsonl(tmp_path):
    rows = [MetricsRow(epoch=1, train_loss=2.0, train_top1=10.0, train_top5=50.0, val_loss=2.1, val_top1=12.5,
                       val_top5=55.0, lr=0.1, epoch_time_s=3.0, images_per_s=100.0, peak_memory_mb=500.0,
                       peak_memory_kind="cpu_max_rss"),
            MetricsRow(epoch=2, train_loss=1 / 3, train_top1=10.0, train_top5=50.0, val_loss=2.1, val_top1=12.5,
                       val_top5=55.0, lr=0.1, epoch_time_s=3.0, images_per_s=100.0, peak_memory_mb=500.0,
                       peak_memory_kind="cpu_max_rss", val_loss_ema=2.0, val_top1_ema=25.0, val_top5_ema=75.0)]
    run = RunDir(tmp_path)
    assert run.metrics_csv == tmp_path / "metrics.csv"
    write_metrics_csv(run.metrics_csv, rows)
    with run.metrics_csv.open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(METRIC_KEYS)
    assert table[0]["val_top1_ema"] == "" and float(table[1]["val_top1_ema"]) == 25.0
    assert float(table[1]["train_loss"]) == 1 / 3  # floats read back exactly
    assert [int(r["epoch"]) for r in table] == [1, 2]
