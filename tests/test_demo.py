"""`miniplaces demo` end to end on a tiny setting: every phase runs and the report holds what it made."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from miniplaces.cli import main
from miniplaces.workflows.demo import DemoOptions, synthetic_data

TINY = ["--epochs", "1", "--image-size", "32", "--batch-size", "16", "--classes", "5", "--per-class", "8",
        "--val-per-class", "4", "--attack-images", "8", "--saliency-images", "4", "--workers", "0",
        "--device", "cpu", "--threads", "1"]


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    threads = torch.get_num_threads()
    assert main(["demo", "--out", str(out), *TINY]) == 0
    assert torch.get_num_threads() == threads  # the demo's one thread is undone
    printed = capsys.readouterr().out
    for index, phase in enumerate(("data", "train", "unfold", "eval", "saliency", "attack", "report"), 1):
        assert f"[{index}/7] {phase}" in printed
    assert f"report: {out / 'report' / 'report.html'}" in printed

    run = out / "runs" / "simplenet"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1
    evaluation = json.loads((run / "checkpoints" / "eval_val.json").read_text())
    assert evaluation["count"] == 20
    attack = json.loads((run / "attack" / "attack.json").read_text())
    assert attack["images"] == 8 and attack["eps"] == pytest.approx(8 / 255)
    # The same record as `miniplaces attack` writes: the model and the limit as asked.
    assert attack["model"] == {"name": "simplenet", "kwargs": {"num_classes": 5}} and attack["limit"] == 8
    sweep = json.loads((run / "attack" / "sweep.json").read_text())["rows"]
    assert [r["eps"] * 255 for r in sweep] == pytest.approx([4, 8, 16])
    # More ε never makes the attacked accuracy higher (PGD from the same start, same steps).
    assert all(a["adv_top1"] >= b["adv_top1"] for a, b in zip(sweep, sweep[1:], strict=False))

    report = out / "report"
    for name in ("report.html", "results.md", "results.csv", "accuracy.png", "loss.png", "time_memory.png",
                 "attack_accuracy.png"):
        assert (report / name).is_file(), name
    assert sorted(p.name for p in (report / "grids" / "simplenet").iterdir()) == [
        "attack_grid.png", "saliency_vanilla.png", "sweep.png"]
    # The page embeds small copies and links each full-size image, which sits beside it.
    page = (report / "report.html").read_text()
    links = set(re.findall(r'<a href="([^"]+)">', page))
    assert "confusion/simplenet_val.png" in links and len(links) == 8
    assert all((report / link).is_file() for link in links)
    assert (report / "report.html").stat().st_size < 3_000_000
    with (report / "results.csv").open() as handle:
        native, unfold = list(csv.DictReader(handle))
    assert float(native["val_top1"]) == pytest.approx(metrics[0]["val_top1"])
    assert float(native["adv_top1"]) == pytest.approx(attack["adv_top1"])
    assert (native["model"], unfold["model"]) == ("simplenet", "simplenet_unfold")
    # Same seed and weights, convolution by unfold: the same first epoch up to float error.
    unfold_metrics = json.loads((out / "runs" / "simplenet_unfold" / "metrics.jsonl").read_text().splitlines()[0])
    assert unfold_metrics["train_loss"] == pytest.approx(metrics[0]["train_loss"], rel=1e-3)


def test_synthetic_data_is_reused_while_settings_match(tmp_path: Path) -> None:
    options = DemoOptions(out=tmp_path, classes=2, per_class=2, val_per_class=1, image_size=16)
    root, reused = synthetic_data(options)
    assert not reused and len((root / "train.txt").read_text().splitlines()) == 4
    stamp = (root / "train.txt").stat().st_mtime_ns
    assert synthetic_data(options) == (root, True) and (root / "train.txt").stat().st_mtime_ns == stamp
    root, reused = synthetic_data(DemoOptions(out=tmp_path, classes=3, per_class=2, val_per_class=1, image_size=16))
    assert not reused and len((root / "train.txt").read_text().splitlines()) == 6
