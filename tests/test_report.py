"""`miniplaces report` on run folders the real commands wrote: tables equal the files, figures and page are
written, unreadable and foreign folders are named."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from miniplaces.cli import main
from miniplaces.records import AttackResult, EvalResult, Sweep
from miniplaces.report import RunError, build_report, find_run_dirs, load_run
from miniplaces.rundir import RunDir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


def metrics_of(run: Path) -> list[dict]:
    """metrics.jsonl parsed here, independently of rundir."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def copy_runs(produced_runs: Path, tmp_path: Path, *names: str) -> list[Path]:
    return [Path(shutil.copytree(produced_runs / name, tmp_path / "runs" / name)) for name in names]


def test_report_on_two_runs_writes_everything_and_numbers_match(produced_runs: Path, tmp_path: Path) -> None:
    native, unfold = produced_runs / "native", produced_runs / "unfold"
    out = tmp_path / "report"
    report = build_report([native, unfold], out)

    names = {p.name for p in out.iterdir()}
    assert {"results.md", "results.csv", "report.html", "accuracy.png", "loss.png", "time_memory.png",
            "attack_accuracy.png", "grids"} <= names
    for figure in report.figures:
        assert figure.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in (out / "grids" / "native").iterdir()) == [
        "attack_grid.png", "saliency_vanilla.png", "sweep.png"]
    assert not (out / "grids" / "unfold").exists()

    with (out / "results.csv").open() as handle:
        table = {row["run"]: row for row in csv.DictReader(handle)}
    for run, model in ((native, "simplenet"), (unfold, "simplenet_unfold")):
        row, rows = table[run.name], metrics_of(run)
        last = rows[-1]
        assert row["model"] == model
        for key in ("train_top1", "train_top5", "val_top1", "val_top5"):
            assert float(row[key]) == pytest.approx(last[key])
        best = max(rows, key=lambda r: r["val_top1"])  # the first of equal bests, as the table takes it
        assert float(row["best_val_top1"]) == pytest.approx(best["val_top1"])
        assert float(row["best_val_top5"]) == pytest.approx(best["val_top5"])
        assert int(row["best_epoch"]) == best["epoch"]
        assert float(row["min_train_loss"]) == pytest.approx(min(r["train_loss"] for r in rows))
        assert float(row["epoch_time_s"]) == pytest.approx(sum(r["epoch_time_s"] for r in rows) / len(rows))
        assert float(row["peak_memory_mb"]) == pytest.approx(max(r["peak_memory_mb"] for r in rows))
        assert row["memory_kind"] == "CPU peak RSS"
    assert table["native"]["epochs"] == "2"
    assert table["unfold"]["epochs"] == "2 of 3"  # interrupted after epoch 2
    attack = json.loads((native / "attack" / "attack.json").read_text())
    assert float(table["native"]["clean_top1"]) == pytest.approx(attack["clean_top1"])
    assert float(table["native"]["adv_top1"]) == pytest.approx(attack["adv_top1"])
    assert table["native"]["attack"] == "untargeted ε=4/255" and table["unfold"]["adv_top1"] == ""

    markdown = (out / "results.md").read_text()
    main_table, details = markdown.split("## Details")
    unfold_line = next(line for line in main_table.splitlines() if line.startswith("| unfold "))
    assert unfold_line.rstrip().endswith("| raw | — |")  # no EMA; no attack data: attacked
    unfold_line = next(line for line in details.splitlines() if line.startswith("| unfold "))
    assert unfold_line.rstrip().endswith("| — | — | — |")  # no attack data: clean, attacked, attack

    page = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(report.figures) + len(report.grids) + len(report.confusion) == 8
    for source in sources:
        mime, payload = re.fullmatch(r"data:(image/png|image/jpeg);base64,(.+)", source).groups()  # type: ignore[union-attr]
        assert base64.b64decode(payload).startswith(PNG_MAGIC if mime == "image/png" else JPEG_MAGIC)
    # Each embedded image links to its full-size file beside the page.
    links = set(re.findall(r'<a href="([^"]+)">', page))
    assert links == {p.relative_to(out).as_posix() for p in report.figures + report.grids + report.confusion}
    for link in links:
        assert (out / link).read_bytes().startswith(PNG_MAGIC)


def test_the_report_reads_each_record_as_its_command_wrote_it(produced_runs: Path) -> None:
    run = load_run(produced_runs / "native")
    files = RunDir(produced_runs / "native")
    assert run.attack == AttackResult.read(files.attack.result)
    assert run.sweep == Sweep.read(files.attack.sweep)
    assert run.evals == {"val": EvalResult.read(files.eval_json("val"))}
    assert run.attack.source.checkpoint == str(files.best) and run.attack.source.limit == 8  # type: ignore[union-attr]
    # The sweep was run at ε = 0, so its own row is the clean point: no extra point is added.
    points = run.sweep_points()
    assert [p.eps * 255 for p in points] == pytest.approx([0, 2, 4])
    assert points[0].top1 == run.sweep.rows[0].clean_top1  # type: ignore[union-attr]


def test_sweep_without_zero_gets_the_clean_point(produced_runs: Path, synth_root: Path, tmp_path: Path) -> None:
    (run,) = copy_runs(produced_runs, tmp_path, "native")
    assert main(["attack", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--root", str(synth_root),
                 "--device", "cpu", "--mode", "fgsm", "--eps", "32/255", "--limit", "8", "--grid", "2",
                 "--sweep", "32/255,8/255"]) == 0
    loaded = load_run(run)
    first, second = loaded.sweep.rows  # type: ignore[union-attr]
    points = loaded.sweep_points()
    assert [p.eps * 255 for p in points] == pytest.approx([0, 8, 32])
    assert [(p.top1, p.top5) for p in points] == [(first.clean_top1, first.clean_top5),
                                                 (second.adv_top1, second.adv_top5), (first.adv_top1, first.adv_top5)]


def test_run_lacking_config_shows_dash_and_no_attack_columns(produced_runs: Path, tmp_path: Path) -> None:
    (run,) = copy_runs(produced_runs, tmp_path, "unfold")
    (run / "config.yaml").unlink()
    report = build_report([run], tmp_path / "out")
    header, _, line = report.table.splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                     [c.strip() for c in line.strip("|").split("|")], strict=True))
    assert cells["Model"] == "—" and cells["Epochs"] == "2"  # planned epochs unknown without the config
    assert "Attacked top-1 %" not in cells  # no run was attacked
    assert not (tmp_path / "out" / "attack_accuracy.png").exists()
    assert (tmp_path / "out" / "accuracy.png").exists()
    assert any("config.yaml: missing" in note for note in report.notes)


def test_unreadable_files_are_named(produced_runs: Path, tmp_path: Path) -> None:
    native, unfold = copy_runs(produced_runs, tmp_path, "native", "unfold")
    (native / "attack" / "sweep.json").write_text('{"rows": [')  # an optional file: ignored with a note
    with (unfold / "metrics.jsonl").open("a") as handle:  # the required file: the run is skipped
        handle.write('{"epoch": 3, "train_lo')
    report = build_report([native, unfold], tmp_path / "out")
    assert [run.name for run in report.runs] == ["native"] and report.runs[0].sweep is None
    assert any("sweep.json" in note for note in report.notes)
    assert any("unfold/metrics.jsonl:3" in note for note in report.notes)
    with pytest.raises(RunError, match=r"metrics.jsonl:3: not JSON"):
        load_run(unfold)


def test_empty_and_foreign_folders_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    Image.new("RGB", (8, 8)).save(foreign / "cat.png")
    with pytest.raises(RunError, match=r"empty: empty folder"):
        build_report([empty], tmp_path / "out")
    with pytest.raises(RunError, match=r"photos: no metrics.jsonl"):
        build_report([foreign], tmp_path / "out")
    assert main(["report", str(foreign), "--out", str(tmp_path / "out")]) == 2
    assert "error: no run directory found" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_run_still_in_its_first_epoch_is_named(data_for_first_epoch: Path) -> None:
    with pytest.raises(RunError, match="metrics.jsonl holds no epochs"):
        build_report([data_for_first_epoch], data_for_first_epoch.parent / "out")


@pytest.fixture
def data_for_first_epoch(produced_runs: Path, tmp_path: Path) -> Path:
    """A run as training leaves it before its first epoch ends: metrics.jsonl written, with no rows."""
    from miniplaces.records import write_metrics

    (run,) = copy_runs(produced_runs, tmp_path, "unfold")
    write_metrics(RunDir(run).metrics, [])
    return run


def test_glob_of_runs_skips_non_runs_with_a_note(produced_runs: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    copy_runs(produced_runs, tmp_path, "native", "unfold")
    runs = tmp_path / "runs"
    (runs / "notes.txt").write_text("x")
    (runs / "scratch").mkdir()
    dirs, notes = find_run_dirs(sorted(runs.iterdir()))
    assert [d.name for d in dirs] == ["native", "unfold"]
    assert any("notes.txt: not a folder" in n for n in notes) and any("scratch: empty folder" in n for n in notes)
    # A folder of runs stands for its runs.
    assert [d.name for d in find_run_dirs([runs])[0]] == ["native", "unfold"]
    assert main(["report", *map(str, sorted(runs.iterdir())), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "note: " in printed and "scratch" in printed and "report.html" in printed


def _settings_after(page: str, heading: str) -> dict[str, dict[str, str]]:
    """run → setting → cell text, from the first table after `heading` (one row per setting, a column per run)."""
    table = re.search(re.escape(heading) + r".*?<table>(.*?)</table>", page, re.S).group(1)  # type: ignore[union-attr]
    runs = re.findall(r"<th>(.*?)</th>", table.split("</thead>")[0])[1:]
    settings: dict[str, dict[str, str]] = {run: {} for run in runs}
    for name, cells in re.findall(r"<tr><th>(.*?)</th>(.*?)</tr>", table.split("</thead>")[1]):
        for run, cell in zip(runs, re.findall(r"<td[^>]*>(.*?)</td>", cells), strict=True):
            settings[run][name] = cell
    return settings


def test_each_run_shows_its_data_and_hyper_parameters(produced_runs: Path, tmp_path: Path) -> None:
    import yaml

    report = build_report([produced_runs], tmp_path / "out")
    rows = _settings_after(report.html.read_text(), "data and hyper-parameters")
    assert set(rows) == {"native", "unfold"}
    for name, model in (("native", "simplenet"), ("unfold", "simplenet_unfold")):
        config = yaml.safe_load((produced_runs / name / "config.yaml").read_text())
        row = rows[name]
        root = Path(config["root"])
        assert row["Dataset"] == f"{root.parent.name}/{root.name}"
        assert row["Image size"] == "32×32" and row["Model"] == model
        assert row["Epochs planned"] == str(config["epochs"]) and row["Batch"] == "16"
        assert row["Optimizer"] == config["optimizer"] == "sgd"  # resolved from the model card
        assert float(row["LR"]) == config["lr"] == 0.05
        assert float(row["Weight decay"]) == config["weight_decay"] > 0
        assert float(row["Warm-up epochs"]) == 1 and float(row["Label smoothing"]) == 0
        assert row["Loader"] == "dataloader, 0 workers" and row["AMP"] == "none"
        assert "momentum 0.9" in row["Other"] and "seed 0" in row["Other"]
    assert rows["unfold"]["Epochs planned"] == "3"
    # Only the evaluated run knows its classes and images: 4 classes × 4 val images.
    assert rows["native"]["Classes"] == "4" and rows["native"]["Eval images"] == "val 16"
    assert rows["unfold"]["Classes"] == "—" and rows["unfold"]["Eval images"] == "—"


def test_confusion_matrix_only_for_evaluated_runs(produced_runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = build_report([produced_runs], out)
    assert report.confusion == [out / "confusion" / "native_val.png"]
    with Image.open(report.confusion[0]) as image:
        assert image.format == "PNG" and image.width > 300
    assert not any("unfold" in p.name for p in (out / "confusion").iterdir())
    assert any(note.startswith("unfold: no confusion matrix") for note in report.notes)
    assert "Confusion matrices" in report.html.read_text()


def _eval_result(classes: int, confusion: list[list[int]]) -> EvalResult:
    from miniplaces.records import ClassAccuracy

    per_class = [ClassAccuracy(f"/x/class{i}", 0.0, sum(confusion[i])) for i in range(classes)]
    return EvalResult("best.pt", {"name": "simplenet", "kwargs": {}}, 1, "val", None, 128,
                      sum(map(sum, confusion)), 50.0, 90.0, 1.0, per_class, confusion)


def test_confusion_figure_of_100_classes_is_a_row_normalised_image(tmp_path: Path) -> None:
    """Rows are normalised (a class with 3× the images is as bright), no text in the cells, a colour bar."""
    import numpy as np

    from miniplaces.report.figures import confusion_figure, confusion_matrix

    classes = 100
    confusion = [[(3 if i % 2 else 1) * (i == j) + (i == 6 and j == 7) for j in range(classes)] for i in range(classes)]
    figure = confusion_figure(_eval_result(classes, confusion), "run")
    matrix_axes, colorbar_axes = figure.axes  # the matrix and its colour bar
    shown = np.asarray(matrix_axes.images[0].get_array())
    assert shown.shape == (classes, classes)
    assert shown[1, 1] == shown[2, 2] == 100 and shown[6, 6] == shown[6, 7] == 50 and shown[7, 6] == 0
    assert len(matrix_axes.texts) == 0
    assert [t.get_text() for t in matrix_axes.get_xticklabels()] == [str(i) for i in range(0, classes, 10)]
    assert colorbar_axes.get_ylabel() == "% of the true class"
    with Image.open(confusion_matrix(_eval_result(classes, confusion), "run", tmp_path / "cm.png")) as image:
        assert image.format == "PNG"


def test_confusion_figure_of_few_classes_names_them() -> None:
    from miniplaces.report.figures import confusion_figure

    figure = confusion_figure(_eval_result(4, [[2, 1, 0, 0], [0, 3, 0, 0], [0, 0, 0, 0], [1, 0, 0, 2]]), "run")
    axes = figure.axes[0]
    names = ["class0", "class1", "class2", "class3"]
    assert [t.get_text() for t in axes.get_xticklabels()] == names
    assert [t.get_text() for t in axes.get_yticklabels()] == names
    assert list(axes.images[0].get_array()[2]) == [0, 0, 0, 0]  # a class without images: an empty row, no NaN


def test_embedded_copies_are_small_and_full_size_files_are_linked(produced_runs: Path, tmp_path: Path) -> None:
    """A demo-sized photographic grid (1600 px of noise, the worst case for PNG) is embedded downscaled as JPEG."""
    import numpy as np

    from miniplaces.report.html import EMBED_MAX_WIDTH

    (run,) = copy_runs(produced_runs, tmp_path, "native")
    noise = np.random.default_rng(0).integers(0, 256, (900, 1600, 3), dtype=np.uint8)
    Image.fromarray(noise).save(run / "saliency" / "saliency_big.png")
    full = (run / "saliency" / "saliency_big.png").stat().st_size
    out = tmp_path / "out"
    report = build_report([run], out)
    page = report.html.read_text()
    big = next(p for p in report.grids if p.name == "saliency_big.png")
    assert big.stat().st_size == full  # the full-size file beside the report is the run's own
    link = big.relative_to(out).as_posix()
    source = re.search(rf'<a href="{re.escape(link)}"><img src="data:image/jpeg;base64,([^"]+)"', page).group(1)  # type: ignore[union-attr]
    with Image.open(io.BytesIO(base64.b64decode(source))) as embedded:
        assert embedded.format == "JPEG" and embedded.size == (EMBED_MAX_WIDTH, 675)
    assert len(page) < full / 2


def _tables_after(page: str, heading: str) -> list[tuple[list[str], list[list[str]]]]:
    """(headers, rows of cell texts) of each table in the section that starts at `heading` (up to the next h2)."""
    section = page.split(heading, 1)[1].split("<h2>", 1)[0]
    tables = []
    for table in re.findall(r"<table>(.*?)</table>", section, re.S):
        head, body = table.split("</thead>")
        tables.append((re.findall(r"<th>(.*?)</th>", head),
                       [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]))
    return tables


def test_main_table_is_narrow_and_the_details_hold_every_column(produced_runs: Path, tmp_path: Path) -> None:
    from miniplaces.report.tables import COLUMNS, MAIN_COLUMNS, results_rows

    report = build_report([produced_runs], tmp_path / "out")
    page = report.html.read_text()
    (main_head, main_rows), (details_head, details_rows) = _tables_after(page, "<h2>Results</h2>")
    assert len(main_head) <= 7 and main_head[:3] == ["Run", "Model", "Epochs"]
    assert "Best val top-1 %" in main_head and "Weights" in main_head
    # The details sit behind a toggle and hold every field of the rows: both runs were attacked or not, so
    # only the EMA and eval-TTA-less columns no run has may be missing (the native run was evaluated).
    toggle = page.split("<h2>Results</h2>", 1)[1]
    assert toggle.index("<details>") < toggle.index("Last val top-1 % (raw)") < toggle.index("</details>")
    rows = results_rows(report.runs)
    assert set(rows[0]) == {c.key for c in COLUMNS} and set(MAIN_COLUMNS) <= set(rows[0])
    headers = {c.header: c.key for c in COLUMNS}
    assert {headers[h] for h in details_head} == {c.key for c in COLUMNS} - {"best_val_top1_raw"}
    assert [r[0] for r in details_rows] == [r[0] for r in main_rows] == ["native", "unfold"]
    native = dict(zip(details_head, details_rows[0], strict=True))
    best = max(metrics_of(produced_runs / "native"), key=lambda r: r["val_top1"])
    assert float(native["Best val top-1 %"]) == pytest.approx(best["val_top1"], abs=0.005)
    assert native["Weights"] == "raw" and native["Time per epoch s"] != "—"
    assert "Time/epoch s" not in page  # "Time per epoch s" wraps between words, not inside one
    # The settings, 16 rows of reading, are a click away too, so the figures come up first.
    settings = page.split("data and hyper-parameters</h2>", 1)[1].split("<h2>", 1)[0]
    assert settings.lstrip().startswith("<details>") and settings.index("<table>") < settings.index("</details>")


def test_ema_run_says_its_best_belongs_to_the_ema(synth_root: Path, tmp_path: Path) -> None:
    """best.pt holds the EMA: the main table's best is the EMA's, the raw best has its own column."""
    from tiny_runs import config

    from miniplaces.report.tables import results_rows
    from miniplaces.workflows.evaluate import evaluate_checkpoint
    from miniplaces.workflows.train import train

    run = train(config(synth_root, tmp_path, name="ema", ema=True, ema_decay=0.5, epochs=2), progress=False)
    evaluate_checkpoint(run / "checkpoints" / "best.pt", synth_root, workers=0, progress=False)
    metrics = metrics_of(run)
    (row,) = results_rows([load_run(run)])
    best = max(metrics, key=lambda r: r["val_top1_ema"])
    assert (row["best_val_top1"], row["best_val_top5"]) == (best["val_top1_ema"], best["val_top5_ema"])
    assert row["best_epoch"] == best["epoch"] == torch_load_epoch(run)
    assert row["weights"] == "EMA" and row["best_val_top1_raw"] == max(r["val_top1"] for r in metrics)
    report = build_report([run], tmp_path / "out")
    page = report.html.read_text()
    (main_head, main_rows), (details_head, _) = _tables_after(page, "<h2>Results</h2>")
    assert dict(zip(main_head, main_rows[0], strict=True))["Weights"] == "EMA"
    assert "Best raw val top-1 %" in details_head
    assert "confusion matrix on val (best.pt, EMA weights)" in page


def torch_load_epoch(run: Path) -> int:
    from miniplaces.engine.checkpoint import load_checkpoint

    return int(load_checkpoint(run / "checkpoints" / "best.pt")["epoch"])


def test_accuracy_legend_has_a_line_style_per_split_and_coinciding_runs_stay_visible(
        produced_runs: Path, tmp_path: Path) -> None:
    from miniplaces.report.figures import ACCURACY_PANELS, coinciding, curves_figure

    first, second = copy_runs(produced_runs, tmp_path, "native", "unfold")
    twin = Path(shutil.copytree(first, tmp_path / "runs" / "twin"))
    runs = [load_run(p) for p in (first, second, twin)]
    assert coinciding(runs, "val_top1") == [("native", "twin")]
    figure = curves_figure(runs, ACCURACY_PANELS, "accuracy (%)")
    assert figure is not None
    # One legend, beside the last panel: a colour and marker per run, then a line style per split.
    assert [axes.get_legend() is None for axes in figure.axes] == [True, False]
    handles = figure.axes[-1].get_legend().legend_handles
    assert [h.get_label() for h in handles] == ["native", "unfold", "twin", "train", "val"]
    styles = {h.get_label(): h.get_linestyle() for h in handles}
    assert styles["train"] == "--" and styles["val"] == "-"
    assert len({h.get_marker() for h in handles[:3]}) == 3
    for axes in figure.axes:
        # The twin's curves lie on the native run's: a different, smaller marker keeps both visible, and a
        # note under the panel says they coincide.
        lines = {line.get_label(): line for line in axes.get_lines()}
        native, twin_line = lines["native val"], lines["twin val"]
        assert list(native.get_ydata()) == list(twin_line.get_ydata())
        assert native.get_marker() != twin_line.get_marker()
        assert twin_line.get_markersize() < native.get_markersize()
        assert any("native = twin" in text.get_text() for text in axes.texts)


def test_confused_pairs_and_per_class_accuracy_of_a_known_matrix(produced_runs: Path, tmp_path: Path) -> None:
    from miniplaces.report.tables import ConfusedPair, confused_pairs, per_class_accuracy

    confusion = [[5, 3, 0, 2], [0, 10, 0, 0], [0, 0, 0, 0], [1, 0, 6, 3]]
    result = _eval_result(4, confusion)
    assert confused_pairs(result, top=3) == [ConfusedPair("class3", "class2", 6, 60.0),
                                             ConfusedPair("class0", "class1", 3, 30.0),
                                             ConfusedPair("class0", "class3", 2, 20.0)]
    assert len(confused_pairs(result)) == 4  # every non-zero off-diagonal cell, no more
    # Worst first; the class without images has no accuracy and is left out.
    assert per_class_accuracy(result) == [("class3", 30.0, 10), ("class0", 50.0, 10), ("class1", 100.0, 10)]

    # In the page: the pairs by name with their counts, and every class's accuracy behind a toggle.
    report = build_report([produced_runs / "native"], tmp_path / "out")
    page = report.html.read_text()
    evaluated = report.runs[0].evals["val"]
    tables = _tables_after(page, "<h2>Confusion matrices</h2>")
    (pairs_head, pairs_rows), (classes_head, classes_rows) = tables
    assert pairs_head == ["True class", "Predicted as", "Images", "% of the true class"]
    expected = confused_pairs(evaluated)
    assert [(r[0], r[1], int(r[2])) for r in pairs_rows] == [(p.true, p.predicted, p.count) for p in expected]
    assert classes_head == ["#", "Class", "Top-1 %", "Images"]
    assert len(classes_rows) == len(evaluated.per_class)
    accuracies = [float(r[2]) for r in classes_rows]
    assert accuracies == sorted(accuracies)


def test_percent_axes_fit_the_data(produced_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from miniplaces.report import figures

    axes = Figure().add_subplot()
    assert figures.fit_percent_axis(axes, [40.0, 50.0]) == pytest.approx((39.0, 51.0))
    assert axes.get_ylim() == pytest.approx((39.0, 51.0))
    assert figures.fit_percent_axis(axes, [99.0, 99.5]) == pytest.approx((96.75, 100.0))  # ≥ 5 points, ≤ 100
    assert figures.fit_percent_axis(axes, [0.0, 30.0]) == pytest.approx((0.0, 33.0))

    drawn: list[Figure] = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda figure, path: (drawn.append(figure), save(figure, path))[1])
    run = load_run(produced_runs / "native")
    assert figures.attack_accuracy([run], tmp_path / "attack.png") is not None
    values = [p.top1 for p in run.sweep_points()]
    low, high = drawn[0].axes[0].get_ylim()
    assert low <= min(values) and high >= max(values) and high - low <= max(max(values) - min(values), 5) * 1.25


def test_sweep_plot_fits_its_axis_and_grids_name_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from miniplaces.explain import overlay

    saved: list[Figure] = []
    monkeypatch.setattr(overlay, "_save", lambda figure, path: (saved.append(figure), Path(path))[1])
    rows = [{"eps": e / 255, "adv_top1": t1, "adv_top5": t5} for e, t1, t5 in ((0, 41, 62), (2, 35, 58), (4, 30, 50))]
    overlay.sweep_plot(rows, tmp_path / "sweep.png")
    assert saved[0].axes[0].get_ylim() == pytest.approx((26.8, 65.2))  # 30..62, 10% of the range on each side
    assert overlay.run_label(Path("runs/fast/checkpoints/best.pt")) == "fast"
    assert overlay.run_label(Path("runs/fast/checkpoints/last.pt")) == "fast (last.pt)"
    assert overlay.run_label(Path("weights/model.pt")) == "model.pt"
    assert overlay.run_label(tmp_path) == tmp_path.name


def test_saliency_and_attack_pictures_are_titled_by_run_name(produced_runs: Path, synth_root: Path,
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from miniplaces.workflows import analysis

    titles: list[str] = []
    for name in ("saliency_grid", "sweep_plot"):
        original = getattr(analysis, name)
        monkeypatch.setattr(analysis, name, lambda *a, _f=original, **k: (titles.append(k["title"]), _f(*a, **k))[1])
    (run,) = copy_runs(produced_runs, tmp_path, "native")
    common = ["--checkpoint", str(run / "checkpoints" / "best.pt"), "--root", str(synth_root), "--device", "cpu"]
    assert main(["saliency", *common, "--n", "2"]) == 0
    assert main(["attack", *common, "--mode", "fgsm", "--eps", "4/255", "--limit", "8", "--grid", "2",
                 "--sweep", "2/255"]) == 0
    assert len(titles) == 2 and all("· native ·" in t and "best.pt" not in t for t in titles)


def test_report_names_runs_inside_the_current_folder_by_their_relative_path(
        produced_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (inside,) = copy_runs(produced_runs, tmp_path, "native")
    monkeypatch.chdir(tmp_path)
    page = build_report([inside, produced_runs / "unfold"], tmp_path / "report").html.read_text()
    runs_line = next(line for line in page.splitlines() if line.startswith("<p>Runs: "))
    # The run under the current folder is named as the user would type it; the other keeps its full path.
    assert "<code>runs/native</code>" in runs_line and str(tmp_path) not in runs_line.split(",")[0]
    assert f"<code>{(produced_runs / 'unfold').resolve()}</code>" in runs_line
