"""`miniplaces report`: tables equal the runs' metrics, figures and page are written, bad folders are named."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from miniplaces.cli import main
from miniplaces.report import RunError, build_report, find_run_dirs
from miniplaces.report.runs import parse_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, model: str, epochs: int, offset: float = 0.0, planned: int | None = None,
             drop: tuple[str, ...] = ()) -> tuple[Path, list[dict]]:
    """A run directory as `miniplaces train` writes it: config.yaml + metrics.jsonl."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": model, "epochs": planned or epochs}))
    rows = []
    for e in range(1, epochs + 1):
        row = {
            "epoch": e, "train_loss": 2.0 / e + offset, "train_top1": 20.0 * e + offset, "train_top5": 50 + 10 * e,
            "val_loss": 2.2 / e, "val_top1": [0, 30.5, 41.25, 39.0][e] + offset, "val_top5": 60.0 + e,
            "lr": 0.1, "epoch_time_s": 10.0 + e + offset, "images_per_s": 100.0 * e,
            "peak_memory_mb": 500.0 + 10 * e + offset, "peak_memory_kind": "cpu_max_rss",
        }
        for key in drop:
            row.pop(key)
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run, rows


def png(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def add_attack(run: Path) -> None:
    (run / "attack").mkdir()
    (run / "attack" / "attack.json").write_text(json.dumps(
        {"mode": "least-likely", "eps": 6 / 255, "clean": {"top1": 41.25, "top5": 63.0},
         "adversarial": {"top1": 3.5, "top5": 20.0}}))
    (run / "attack" / "sweep.json").write_text(json.dumps(
        [{"eps": 0.0, "top1": 41.25}, {"eps": 2 / 255, "top1": 20.0}, {"eps": 4 / 255, "top1": 8.0}]))
    png(run / "attack" / "attack_grid.png")
    png(run / "saliency" / "saliency_vanilla.png", (50, 20))


def test_report_on_two_runs_writes_everything_and_numbers_match(tmp_path: Path) -> None:
    native, native_rows = make_run(tmp_path / "runs", "native", "simplenet", 3)
    unfold, unfold_rows = make_run(tmp_path / "runs", "unfold", "simplenet_unfold", 2, offset=1.0, planned=10)
    add_attack(native)
    out = tmp_path / "report"
    report = build_report([native, unfold], out)

    names = {p.name for p in out.iterdir()}
    assert {"results.md", "results.csv", "report.html", "accuracy.png", "loss.png", "time_memory.png",
            "attack_accuracy.png", "grids"} <= names
    for figure in report.figures:
        assert figure.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in (out / "grids" / "native").iterdir()) == ["attack_grid.png", "saliency_vanilla.png"]

    with (out / "results.csv").open() as handle:
        table = {row["run"]: row for row in csv.DictReader(handle)}
    for name, rows, model in (("native", native_rows, "simplenet"), ("unfold", unfold_rows, "simplenet_unfold")):
        row, last = table[name], rows[-1]
        assert row["model"] == model
        for key in ("train_top1", "train_top5", "val_top1", "val_top5"):
            assert float(row[key]) == pytest.approx(last[key])
        best = max(rows, key=lambda r: r["val_top1"])
        assert float(row["best_val_top1"]) == pytest.approx(best["val_top1"])
        assert float(row["best_val_top5"]) == pytest.approx(best["val_top5"])
        assert int(row["best_epoch"]) == best["epoch"]
        assert float(row["min_train_loss"]) == pytest.approx(min(r["train_loss"] for r in rows))
        assert float(row["epoch_time_s"]) == pytest.approx(sum(r["epoch_time_s"] for r in rows) / len(rows))
        assert float(row["peak_memory_mb"]) == pytest.approx(max(r["peak_memory_mb"] for r in rows))
    # Best val of the native run is epoch 2 (41.25), not the last epoch (39.0).
    assert table["native"]["best_epoch"] == "2" and float(table["native"]["val_top1"]) == 39.0
    assert table["unfold"]["epochs"] == "2 of 10"
    assert float(table["native"]["adv_top1"]) == 3.5 and table["unfold"]["adv_top1"] == ""

    markdown = (out / "results.md").read_text()
    native_line = next(line for line in markdown.splitlines() if line.startswith("| native "))
    assert "| 41.25 |" in native_line and "| 39.00 |" in native_line and "| 3.50 |" in native_line
    unfold_line = next(line for line in markdown.splitlines() if line.startswith("| unfold "))
    assert unfold_line.rstrip().endswith("| — | — | — |")  # no attack data: clean, attacked, attack

    page = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(report.figures) + len(report.grids) == 6
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_MAGIC)


def test_sweep_without_zero_gets_the_clean_point() -> None:
    rows = {"rows": [{"eps": 8 / 255, "clean_top1": 90.0, "clean_top5": 99.0, "adv_top1": 40.0, "adv_top5": 80.0},
                     {"eps": 4 / 255, "clean_top1": 90.0, "clean_top5": 99.0, "adv_top1": 70.0, "adv_top5": 95.0}]}
    points = parse_sweep(rows)
    assert [(p.eps * 255, p.top1, p.top5) for p in points] == [(0, 90.0, 99.0), (4, 70.0, 95.0), (8, 40.0, 80.0)]
    assert [p.top1 for p in parse_sweep([{"eps": 0, "top1": 50.0}, {"eps": 0.1, "top1": 10.0}])] == [50.0, 10.0]


def test_run_lacking_metrics_shows_dash_and_no_attack_columns(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, "bare", "vit", 2, drop=("peak_memory_mb", "peak_memory_kind", "val_top5", "lr"))
    (run / "config.yaml").unlink()
    report = build_report([run], tmp_path / "out")
    header, _, line = report.table.splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                     [c.strip() for c in line.strip("|").split("|")], strict=True))
    assert cells["Model"] == "—" and cells["Val top-5 %"] == "—" and cells["Peak memory MB"] == "—"
    assert cells["Val top-1 %"] == "41.25"
    assert "Attacked top-1 %" not in cells  # no run was attacked
    assert not (tmp_path / "out" / "attack_accuracy.png").exists()
    assert (tmp_path / "out" / "accuracy.png").exists()
    assert any("config.yaml: missing" in note for note in report.notes)


def test_half_written_last_line_is_skipped(tmp_path: Path) -> None:
    run, rows = make_run(tmp_path, "live", "simplenet", 2)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"epoch": 3, "train_lo')
    report = build_report([run], tmp_path / "out")
    assert report.table.count("\n") == 3 and any("metrics.jsonl:3" in n for n in report.notes)


def test_empty_and_foreign_folders_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "photos"
    png(foreign / "cat.png")
    with pytest.raises(RunError, match=r"empty: empty folder"):
        build_report([empty], tmp_path / "out")
    with pytest.raises(RunError, match=r"photos: no metrics.jsonl"):
        build_report([foreign], tmp_path / "out")
    assert main(["report", str(foreign), "--out", str(tmp_path / "out")]) == 2
    assert "error: no run directory found" in capsys.readouterr().err and not (tmp_path / "out").exists()
    empty_metrics = tmp_path / "starting"
    empty_metrics.mkdir()
    (empty_metrics / "metrics.jsonl").write_text("")
    with pytest.raises(RunError, match="starting/metrics.jsonl holds no epochs"):
        build_report([empty_metrics], tmp_path / "out")


def test_glob_of_runs_skips_non_runs_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    make_run(runs, "a", "simplenet", 1)
    make_run(runs, "b", "simplenet", 2)
    (runs / "notes.txt").write_text("x")
    (runs / "scratch").mkdir()
    dirs, notes = find_run_dirs(sorted(runs.iterdir()))
    assert [d.name for d in dirs] == ["a", "b"]
    assert any("notes.txt: not a folder" in n for n in notes) and any("scratch: empty folder" in n for n in notes)
    # A folder of runs stands for its runs.
    assert [d.name for d in find_run_dirs([runs])[0]] == ["a", "b"]
    assert main(["report", *map(str, sorted(runs.iterdir())), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "note: " in printed and "scratch" in printed and "report.html" in printed
