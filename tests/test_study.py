"""`miniplaces study`: a tiny study on synthetic data, end to end, resumed, rerun, and read against the seed file."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml
from tiny_runs import interrupt_at_step

from miniplaces.cli import main
from miniplaces.records import EvalResult, StudyRecord, read_metrics, write_metrics
from miniplaces.rundir import StudyFiles
from miniplaces.study import SEED_FILE, Scale, load_scales, load_seed
from miniplaces.workflows.study import StudyOutcome, plan_study, run_study, write_study_report
from miniplaces.workflows.train import TrainingInterrupted

TORCH_THREADS = 1
EXPERIMENTS = ["simplenet", "simplenet_unfold", "resnet18"]
# 16 px, 48 training images in 6 batches of 8: a study in seconds.
TINY = Scale(
    name="tiny", description="tests",
    config={"image_size": 16, "batch_size": 8, "warmup_epochs": 0.0, "loader": "cache", "workers": 0,
            "log_every": 1, "lr": 0.05},
    experiments={"simplenet": {"epochs": 2}, "simplenet_unfold": {"epochs": 1}, "resnet18": {"epochs": 1}},
    eval_images=None, attack_images=4, saliency_images=2, threads=1,
)


@pytest.fixture(autouse=True)
def _no_imagenet_weights(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """torch.hub's cache is an empty folder, as on a machine without the ImageNet weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))


def _plan(root: Path, out: Path, **kw: object):  # noqa: ANN202
    return plan_study(root, out, scale=TINY, experiments=EXPERIMENTS, device="cpu", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def study(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StudyOutcome]:
    out = tmp_path_factory.mktemp("study") / "study"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        outcome = run_study(_plan(synth_root, out), progress=False)
    return out, outcome


def _table_rows(markdown: str) -> list[list[str]]:
    rows = [line.strip("|").split(" | ") for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows[1:]]  # without the header


def test_tiny_study_runs_every_step_and_writes_the_side_by_side_table(study: tuple[Path, StudyOutcome]) -> None:
    out, outcome = study
    ran = {(s.experiment, s.step): s.status for s in outcome.steps}
    for name in ("simplenet", "simplenet_unfold"):
        assert [ran[(name, step)] for step in ("train", "eval", "attack", "saliency")] == ["ran"] * 4
    assert ran[("resnet18", "train")] == "skipped"
    # Each step's wall-clock time: training takes longest; the totals follow the steps' order.
    seconds = {(s.experiment, s.step): s.seconds for s in outcome.steps}
    assert all(t > 0 for (name, _), t in seconds.items() if name != "resnet18")
    assert seconds[("resnet18", "train")] == 0  # skipped at planning: nothing checked, nothing ran
    assert seconds[("simplenet", "train")] > seconds[("simplenet", "saliency")]
    assert list(outcome.seconds_by_step()) == ["train", "eval", "attack", "saliency"]
    assert sum(outcome.seconds_by_step().values()) == pytest.approx(sum(seconds.values()))
    files = StudyFiles(out)
    assert len(read_metrics(files.run("simplenet").metrics)) == 2
    assert EvalResult.read(files.run("simplenet").eval_json("val")).count == 16
    assert files.run("simplenet").attack.result.is_file()
    assert (files.run("simplenet").saliency / "saliency_vanilla.png").is_file()
    assert not files.run("resnet18").path.exists()

    assert outcome.report is not None
    text = outcome.report.markdown.read_text()
    assert "## Study vs this project" in text and outcome.report.comparison in text
    rows = _table_rows(outcome.report.comparison)
    assert [(r[0], r[1]) for r in rows] == [(n, s) for n in EXPERIMENTS for s in ("seed", "this project (tiny)")]
    for row in rows:  # every row names its scale: images per epoch, epochs, pixels, device
        assert "train img/epoch ×" in row[2] and " px, " in row[2]
    seed_simplenet, ours_simplenet = rows[0], rows[1]
    assert seed_simplenet[2].startswith("100,000 train img/epoch × 60 ep, 128 px, GPU")
    assert ours_simplenet[2].startswith("tiny: 48 train img/epoch × 2 ep, 16 px, cpu; val 16")
    evaluated = EvalResult.read(files.run("simplenet").eval_json("val"))
    assert ours_simplenet[3] == f"{evaluated.top1:.2f}"
    assert ours_simplenet[5] == f"{evaluated.top1 - 43.86:+.2f}"
    assert seed_simplenet[7] == "—"  # the seed's attacked accuracy is unknown
    assert ours_simplenet[7] != "—"
    unfold_seed, unfold_ours = rows[2], rows[3]
    assert (unfold_seed[8], unfold_seed[9]) == ("4.20", "2.10")
    assert unfold_ours[8] != "—" and unfold_ours[9] == "—"  # CPU peak RSS is no per-run memory
    resnet_ours = rows[5]
    assert resnet_ours[3] == "—" and resnet_ours[10].startswith("skipped: no ImageNet weights (")
    assert "Study vs this project" in outcome.report.html.read_text()


def test_second_invocation_skips_every_step(study: tuple[Path, StudyOutcome], synth_root: Path) -> None:
    out, _ = study
    run = StudyFiles(out).run("simplenet")
    stamps = {p: p.stat().st_mtime_ns for p in (run.metrics, run.last, run.eval_json("val"), run.attack.result)}
    again = run_study(_plan(synth_root, out), progress=False)
    assert again.nothing_ran
    assert {s.status for s in again.steps} == {"done", "skipped"}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_interrupted_study_resumes_the_run_exactly(study: tuple[Path, StudyOutcome], synth_root: Path,
                                                   tmp_path: Path) -> None:
    reference = StudyFiles(study[0]).run("simplenet")
    out = tmp_path / "study"
    plan = plan_study(synth_root, out, scale=TINY, experiments=["simplenet"], device="cpu")
    with pytest.raises(TrainingInterrupted):  # at the last step of epoch 1
        run_study(plan, on_train_step=interrupt_at_step(6), progress=False)
    run = StudyFiles(out).run("simplenet")
    assert [r.epoch for r in read_metrics(run.metrics)] == [1]
    resumed = run_study(plan, progress=False)
    train_step = next(s for s in resumed.steps if s.step == "train")
    assert (train_step.status, train_step.detail) == ("resumed", "from epoch 1 to 2")
    ours, theirs = read_metrics(run.metrics), read_metrics(reference.metrics)
    assert [r.val_top1 for r in ours] == [r.val_top1 for r in theirs]
    assert [r.train_loss for r in ours] == pytest.approx([r.train_loss for r in theirs], rel=1e-5)


def test_cli_without_weights_skips_resnet18_in_one_line_and_exits_0(synth_root: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["study", "--root", str(synth_root), "--out", str(tmp_path / "s"), "--scale", "mini",
                 "--experiments", "resnet18", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("resnet18: skipped: no ImageNet weights")]
    assert len(lines) == 1 and "--resnet-weights PATH" in lines[0]
    record = StudyRecord.read(StudyFiles(tmp_path / "s").record)
    assert record.experiments[0].skipped and record.experiments[0].run is None
    assert "skipped: no ImageNet weights" in (tmp_path / "s" / "report" / "results.md").read_text()


def test_missing_weights_file_is_an_error_before_anything_runs(synth_root: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["study", "--root", str(synth_root), "--out", str(tmp_path / "s"), "--resnet-weights",
                 str(tmp_path / "nope.pth")])
    assert code == 2
    assert "nope.pth does not exist" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_folder_of_other_settings_is_refused(study: tuple[Path, StudyOutcome], synth_root: Path) -> None:
    other = Scale(**{**TINY.__dict__, "experiments": {**TINY.experiments, "simplenet": {"epochs": 3}}})
    with pytest.raises(Exception, match="holds a run with other settings \\(epochs: 2 there, 3 planned\\)"):
        plan_study(synth_root, study[0], scale=other, experiments=["simplenet"], device="cpu")


def test_the_table_reads_the_seed_file(study: tuple[Path, StudyOutcome], tmp_path: Path) -> None:
    data = yaml.safe_load(SEED_FILE.read_text())
    data["experiments"]["simplenet"]["top1"] = 12.34
    data["experiments"]["simplenet"]["adv_top1"] = 5.5
    changed = tmp_path / "seed.yaml"
    changed.write_text(yaml.safe_dump(data))
    folder = tmp_path / "copy"
    shutil.copytree(study[0], folder)
    report = write_study_report(folder, load_seed(changed))
    seed_row = _table_rows(report.comparison)[0]
    assert (seed_row[3], seed_row[7]) == ("12.34", "5.50")


@pytest.mark.parametrize(("unfold_rates", "expected"), [
    ([50.0], "2.00"),  # one epoch against the first of SimpleNet's two (100 images/s), not their mean (250)
    ([50.0, 400.0], "1.80"),  # time per image: (1/50 + 1/400) / (1/100 + 1/400), not 250 / 225 = 1.11
])
def test_time_ratio_is_time_per_image_over_the_epochs_both_ran(study: tuple[Path, StudyOutcome], tmp_path: Path,
                                                                unfold_rates: list[float], expected: str) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(study[0], folder)
    files = StudyFiles(folder)
    for name, rates in (("simplenet", [100.0, 400.0]), ("simplenet_unfold", unfold_rates)):
        row = read_metrics(files.run(name).metrics)[0]
        write_metrics(files.run(name).metrics, [dataclasses.replace(row, epoch=i, images_per_s=rate)
                                                for i, rate in enumerate(rates, 1)])
    report = write_study_report(folder, load_seed())
    unfold_ours = _table_rows(report.comparison)[3]
    assert unfold_ours[0] == "simplenet_unfold" and unfold_ours[8] == expected


def test_packaged_data_files() -> None:
    seed = load_seed()
    assert list(seed.experiments) == ["simplenet", "simplenet_unfold", "vit", "msvit", "resnet18"]
    assert (seed.experiments["resnet18"].top1, seed.experiments["resnet18"].top5) == (52.11, 80.01)
    assert seed.attack.mode == "least-likely" and seed.attack.steps == 10
    scales = load_scales()
    assert set(scales) == {"full", "mini", "fast", "cpu"}
    assert scales["full"].config == {} and scales["mini"].config_for("msvit")["image_size"] == 64
    assert scales["full"].names(seed) == list(seed.experiments) and scales["fast"].names(seed) == ["fast"]
    assert scales["fast"].compare_with == {"fast": "simplenet"}


def test_cpu_scale_plans_six_rows_at_64_px_with_simplenet_and_unfold_alike(synth_root: Path, tmp_path: Path) -> None:
    plan = plan_study(synth_root, tmp_path / "s", scale=load_scales()["cpu"], device="cpu")
    experiments = {e.name: e for e in plan.experiments}
    assert list(experiments) == ["simplenet", "simplenet_unfold", "vit", "msvit", "resnet18", "fast"]
    assert experiments["resnet18"].skipped  # no ImageNet weights file given
    trained = [e for e in plan.experiments if not e.skipped]
    assert {e.config.image_size for e in trained} == {64}
    # SimpleNet and its unfold twin take 12 epochs: at 10 they stop short of the 18 % on the subset.
    assert {e.name: e.config.epochs for e in trained} == {"simplenet": 12, "simplenet_unfold": 12, "vit": 10,
                                                          "msvit": 10, "fast": 10}
    assert {e.config.amp for e in trained} == {"auto"} and {e.config.warmup_epochs for e in trained} == {1}
    fast = experiments["fast"].config
    assert (fast.progressive_start_size, fast.progressive_end_epoch) == (40, 10)  # the recipe's fractions at 64 px
    # The unfold convolution computes the same function: its run differs from SimpleNet's only in the model.
    plain, unfold = (dataclasses.asdict(experiments[n].config) for n in ("simplenet", "simplenet_unfold"))
    assert {k for k in plain if plain[k] != unfold[k]} == {"model", "name"}


def test_fast_scale_trains_the_fast_recipe_and_compares_it_with_simplenet(synth_root: Path, tmp_path: Path) -> None:
    fast = Scale(name="tinyfast", description="tests", include=("fast",), compare_with={"fast": "simplenet"},
                 config={"image_size": 16, "batch_size": 8, "epochs": 1, "warmup_epochs": 0.0, "workers": 0,
                         "log_every": 1, "progressive_start_size": None},
                 eval_images=None, attack_images=4, saliency_images=2, threads=1)
    plan = plan_study(synth_root, tmp_path / "s", scale=fast, device="cpu")
    assert [e.name for e in plan.experiments] == ["fast"] and plan.experiments[0].config.model == "fastnet"
    outcome = run_study(plan, progress=False)
    assert outcome.report is not None
    rows = _table_rows(outcome.report.comparison)
    assert [(r[0], r[1]) for r in rows] == [("simplenet", "seed"), ("fast", "this project (tinyfast)")]
    evaluated = EvalResult.read(StudyFiles(tmp_path / "s").run("fast").eval_json("val"))
    assert rows[1][5] == f"{evaluated.top1 - 43.86:+.2f}" and "Δ vs the seed's simplenet (60 ep)" in rows[1][10]
    assert StudyRecord.read(StudyFiles(tmp_path / "s").record).experiments[0].compare_with == "simplenet"


def test_eval_reads_the_cache_and_caps_the_images(study: tuple[Path, StudyOutcome], synth_root: Path,
                                                  tmp_path: Path) -> None:
    run = StudyFiles(study[0]).run("simplenet")
    common = ["eval", "--checkpoint", str(run.last), "--root", str(synth_root), "--device", "cpu", "--workers", "0"]
    assert main([*common, "--loader", "cache", "--limit", "8", "--batch-size", "8",
                 "--out", str(tmp_path / "capped.json")]) == 0
    assert EvalResult.read(tmp_path / "capped.json").count == 8
    assert main([*common, "--loader", "cache", "--out", str(tmp_path / "cache.json")]) == 0
    assert main([*common, "--out", str(tmp_path / "samples.json")]) == 0
    cached, samples = EvalResult.read(tmp_path / "cache.json"), EvalResult.read(tmp_path / "samples.json")
    assert cached.count == samples.count == 16
    assert cached.top1 == EvalResult.read(run.eval_json("val")).top1  # the study evaluated through the cache
