"""`miniplaces study` trusts only what it has checked: every finished file, damaged in turn, is redone or refused."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image
from tiny_runs import interrupt_at_step

from miniplaces.cli import main
from miniplaces.config import TrainConfig, to_dict
from miniplaces.engine.checkpoint import load_checkpoint
from miniplaces.records import AttackResult, EvalResult, read_metrics
from miniplaces.rundir import RunDir, StudyFiles
from miniplaces.study import Scale
from miniplaces.workflows.study import StudyError, plan_study, run_study
from miniplaces.workflows.study_steps import SEAL_FILE, config_difference
from miniplaces.workflows.train import TrainingInterrupted

# simplenet trains 2 epochs of 6 batches at 16 px; simplenet_unfold (1 epoch) is the other experiment whose
# files are swapped in.
TINY = Scale(
    name="tiny", description="tests",
    config={"image_size": 16, "batch_size": 8, "warmup_epochs": 0.0, "loader": "cache", "workers": 0,
            "log_every": 1, "lr": 0.05},
    experiments={"simplenet": {"epochs": 2}, "simplenet_unfold": {"epochs": 1}},
    eval_images=None, attack_images=4, saliency_images=2, threads=1,
)
TIMING = {"epoch_time_s", "images_per_s", "peak_memory_mb"}


def _plan(root: Path, out: Path, experiments: list[str] | None = None):  # noqa: ANN202
    return plan_study(root, out, scale=TINY, experiments=experiments or ["simplenet"], device="cpu")


@pytest.fixture(scope="module")
def reference(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untouched study of both experiments."""
    out = tmp_path_factory.mktemp("reference") / "study"
    run_study(_plan(synth_root, out, ["simplenet", "simplenet_unfold"]), progress=False)
    return out


def _results(run: RunDir) -> dict[str, object]:
    """What a study's run ends with, without timings and paths."""
    rows = [{k: v for k, v in r.to_dict().items() if k not in TIMING} for r in read_metrics(run.metrics)]
    evaluated = EvalResult.read(run.eval_json("val"))
    attacked = AttackResult.read(run.attack.result)
    with Image.open(run.saliency / "saliency_vanilla.png") as image:
        image.load()  # a truncated PNG fails here
        saliency_size = image.size
    with Image.open(run.attack.grid) as image:
        image.load()
    return {
        "epochs": [r["epoch"] for r in rows], "val_top1": [r["val_top1"] for r in rows],
        "train_loss": [r["train_loss"] for r in rows],
        "eval": (evaluated.epoch, evaluated.count, evaluated.top1, evaluated.top5, evaluated.confusion),
        "eval_loss": evaluated.loss,
        "attack": (attacked.images, attacked.clean_top1, attacked.adv_top1, attacked.settings),
        "saliency_size": saliency_size,
        # Where the run lives is no part of what it computed (a copied study keeps the first folder's).
        "config": {k: v for k, v in yaml.safe_load(run.config.read_text(encoding="utf-8")).items() if k != "out_dir"},
    }


def _assert_same_results(run: RunDir, reference: RunDir) -> None:
    ours, theirs = _results(run), _results(reference)
    for key in ("train_loss", "eval_loss"):  # float sums may differ in the last bits across processes
        assert ours.pop(key) == pytest.approx(theirs.pop(key), rel=1e-5)
    assert ours == theirs


def _damage(path: Path, how: str, other: Path) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "swapped":
        shutil.copyfile(other, path)
    elif how == "deleted":
        path.unlink()
    elif how == "flipped":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "last row lost":
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(lines[:-1]), encoding="utf-8")
    else:
        raise AssertionError(how)


# (file of runs/simplenet, damage, the step that must not be "done", the status it ends with)
CASES = [
    # The last good state is best.pt: resumed from it, or copied when the last epoch was the best.
    *[("checkpoints/last.pt", how, "train", "from best.pt")
      for how in ("truncated", "emptied", "swapped", "deleted", "flipped")],
    ("checkpoints/best.pt", "deleted", "train", "redone"),
    ("checkpoints/best.pt", "flipped", "train", "redone"),
    ("metrics.jsonl", "deleted", "train", "repaired"),
    ("metrics.jsonl", "last row lost", "train", "repaired"),
    ("metrics.jsonl", "swapped", "train", "repaired"),
    ("config.yaml", "deleted", "train", "repaired"),
    ("config.yaml", "swapped", "train", "repaired"),
    ("config.yaml", "emptied", "train", "repaired"),
    ("checkpoints/eval_val.json", "swapped", "eval", "redone"),
    ("checkpoints/eval_val.json", "truncated", "eval", "redone"),
    ("attack/attack.json", "emptied", "attack", "redone"),
    ("attack/attack_grid.png", "truncated", "attack", "redone"),
    *[("saliency/saliency_vanilla.png", how, "saliency", "redone")
      for how in ("truncated", "emptied", "swapped", "deleted")],
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "how", "step", "status"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_damaged_file_is_redone_and_the_study_ends_as_an_untouched_one(
        reference: Path, synth_root: Path, tmp_path: Path, name: str, how: str, step: str, status: str) -> None:
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    run = StudyFiles(out).run("simplenet")
    best_epoch = int(load_checkpoint(run.best)["epoch"])
    _damage(run.path / name, how, StudyFiles(out).run("simplenet_unfold").path / name)

    if status == "from best.pt":
        status = "repaired" if best_epoch == 2 else "resumed"
    outcome = run_study(_plan(synth_root, out), progress=False)
    found = {s.step: s for s in outcome.steps}
    assert found[step].status == status, found[step]
    if found[step].status == "resumed":
        assert found[step].detail == f"from best.pt's epoch {best_epoch} to 2"
    assert found[step].why  # it says why it redid the step
    _assert_same_results(run, StudyFiles(reference).run("simplenet"))
    assert run_study(_plan(synth_root, out), progress=False).nothing_ran  # and now it is proven finished


def test_a_finished_run_without_a_seal_is_checked_and_sealed_not_retrained(reference: Path, synth_root: Path,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    run = StudyFiles(out).run("simplenet")
    (run.path / SEAL_FILE).unlink()  # a study folder written before seals
    stamp = run.last.stat().st_mtime_ns
    outcome = run_study(_plan(synth_root, out), progress=False)
    train = next(s for s in outcome.steps if s.step == "train")
    assert (train.status, train.detail) == ("done", "2 epochs; checked and sealed")
    assert run.last.stat().st_mtime_ns == stamp
    assert (run.path / SEAL_FILE).is_file()
    _assert_same_results(run, StudyFiles(reference).run("simplenet"))


@pytest.mark.parametrize("how", ["last row lost", "deleted"])
def test_metrics_an_unsealed_run_lost_are_retrained_never_resumed_into_nothing(
        reference: Path, synth_root: Path, tmp_path: Path, how: str) -> None:
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    run = StudyFiles(out).run("simplenet")
    (run.path / SEAL_FILE).unlink()
    _damage(run.metrics, how, run.metrics)
    outcome = run_study(_plan(synth_root, out), progress=False)
    train = next(s for s in outcome.steps if s.step == "train")
    assert train.status == "redone" and "metrics.jsonl lacks rows" in train.why
    _assert_same_results(run, StudyFiles(reference).run("simplenet"))


@pytest.mark.parametrize("lost", ["metrics.jsonl", "checkpoints/best.pt"])
def test_an_interrupted_run_that_lost_a_file_starts_again(reference: Path, synth_root: Path, tmp_path: Path,
                                                          lost: str) -> None:
    out = tmp_path / "study"
    plan = _plan(synth_root, out)
    with pytest.raises(TrainingInterrupted):  # at the last step of epoch 1
        run_study(plan, on_train_step=interrupt_at_step(6), progress=False)
    run = StudyFiles(out).run("simplenet")
    (run.path / lost).unlink()
    outcome = run_study(plan, progress=False)
    train = next(s for s in outcome.steps if s.step == "train")
    assert train.status == "redone" and Path(lost).name in train.why
    _assert_same_results(run, StudyFiles(reference).run("simplenet"))


def test_a_config_of_another_experiment_that_nothing_proves_wrong_is_refused_in_one_line(
        reference: Path, synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    files = StudyFiles(out)
    (files.run("simplenet").path / SEAL_FILE).unlink()
    shutil.copyfile(files.run("simplenet_unfold").config, files.run("simplenet").config)
    with pytest.raises(StudyError) as refused:
        _plan(synth_root, out)
    message = str(refused.value)
    assert "\n" not in message and "holds a run with other settings (model: 'simplenet_unfold' there" in message
    assert f"delete {files.run('simplenet').path}" in message


def test_a_deleted_config_is_no_reason_to_skip_the_settings_check(reference: Path, synth_root: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    StudyFiles(out).run("simplenet").config.unlink()
    other = Scale(**{**TINY.__dict__, "experiments": {**TINY.experiments, "simplenet": {"epochs": 3}}})
    with pytest.raises(StudyError, match=r"other settings \(epochs: 2 there, 3 planned\), read from checkpoints/last"):
        plan_study(synth_root, out, scale=other, experiments=["simplenet"], device="cpu")


@pytest.mark.parametrize("selection", [",", " , ", ""])
def test_an_empty_experiment_selection_is_an_error(synth_root: Path, tmp_path: Path, selection: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["study", "--root", str(synth_root), "--out", str(tmp_path / "s"), "--scale", "mini",
                 "--experiments", selection, "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --experiments") and "names no experiment" in err[0]
    assert not (tmp_path / "s").exists()


def test_plan_refuses_no_experiments_and_repeated_ones(synth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="no experiments chosen"):
        plan_study(synth_root, tmp_path / "s", scale=TINY, experiments=[], device="cpu")
    with pytest.raises(StudyError, match="'simplenet' is named twice"):
        plan_study(synth_root, tmp_path / "s", scale=TINY, experiments=["simplenet", "simplenet"], device="cpu")


def test_the_cli_says_why_it_redoes_a_step(reference: Path, synth_root: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    saliency = StudyFiles(out).run("simplenet").saliency / "saliency_vanilla.png"
    saliency.write_bytes(saliency.read_bytes()[:100])
    # The command as typed, at the tests' tiny scale (the CLI takes only the scales file's names).
    monkeypatch.setattr("miniplaces.workflows.study.plan_study", lambda *a, **kw: _plan(synth_root, out))
    assert main(["study", "--root", str(synth_root), "--out", str(out), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "simplenet train: done (2 epochs)" in lines
    redone = [line for line in lines if line.startswith("simplenet saliency: redo (")]
    assert len(redone) == 1 and redone[0].startswith(
        "simplenet saliency: redo (saliency/saliency_vanilla.png is not the file it wrote (its sha256 differs "
        f"from {SEAL_FILE})): redone (saliency_vanilla.png) in ")
    assert re.fullmatch(r".* in \d+ s", redone[0])  # a step that ran says how long it took; a done one does not
    # The study's wall-clock time, and each step's share of it, end the output.
    timing = [line for line in lines if line.startswith("study time: ")]
    assert len(timing) == 1 and re.fullmatch(r"study time: \d+ s \(train \d+ s, eval \d+ s, attack \d+ s, "
                                             r"saliency \d+ s; a resumed study counts this call only\)", timing[0])


def test_a_lost_last_pt_whose_epoch_was_the_best_is_copied_back_from_best_pt(synth_root: Path, tmp_path: Path) -> None:
    one_epoch = Scale(**{**TINY.__dict__, "experiments": {"simplenet": {"epochs": 1}}})
    plan = plan_study(synth_root, tmp_path / "s", scale=one_epoch, experiments=["simplenet"], device="cpu")
    run_study(plan, progress=False)
    run = StudyFiles(tmp_path / "s").run("simplenet")
    kept = run.last.read_bytes()
    assert kept == run.best.read_bytes()  # one epoch: the best is the last, saved from the same state
    run.last.unlink()
    outcome = run_study(plan, progress=False)
    train = next(s for s in outcome.steps if s.step == "train")
    assert (train.status, train.detail) == ("repaired", "last.pt restored from best.pt, the same epoch")
    assert run.last.read_bytes() == kept
    assert [s.status for s in outcome.steps if s.step != "train"] == ["done"] * 3  # they read that very file


def test_a_key_added_after_a_run_counts_as_its_default() -> None:
    """A study folder written before a release added a key (here `muon_lr`) stays valid: the missing key is
    read as its default, which is how that run trained; a value that differs is still a difference."""
    planned = TrainConfig(root="x", model="simplenet", epochs=3)
    older = {k: v for k, v in to_dict(planned).items() if k not in ("muon_lr", "muon_momentum")}
    assert config_difference(planned, older) is None
    assert config_difference(planned, {**older, "muon_lr": 0.5}) == "muon_lr: 0.5 there, 0.08 planned"
    tuned = TrainConfig(root="x", model="simplenet", epochs=3, muon_lr=0.2)
    assert config_difference(tuned, older) == "muon_lr: 0.08 there, 0.2 planned"
