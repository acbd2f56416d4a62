"""The library behind `miniplaces saliency`/`attack`/`demo`: what each report writes and returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from miniplaces.attacks import AttackSpec, evaluate_attack
from miniplaces.data import read_categories
from miniplaces.engine.checkpoint import describe_model, save_checkpoint
from miniplaces.errors import MiniPlacesError
from miniplaces.models import create_model
from miniplaces.records import AttackResult, Sweep
from miniplaces.rundir import RunDir
from miniplaces.workflows.analysis import attack_report, load_for_analysis, saliency_report, settings_line


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("simplenet", num_classes=4)
    return save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(),
                            "categories": read_categories(synth_root), "config": {"image_size": 32}},
                           tmp_path_factory.mktemp("run") / "checkpoints" / "last.pt")


def test_load_for_analysis_takes_the_training_image_size(checkpoint: Path, synth_root: Path) -> None:
    inputs = load_for_analysis(checkpoint, synth_root)
    assert inputs.image_size == 32 and inputs.dataset[0][0].shape == (3, 32, 32)
    assert inputs.categories == read_categories(synth_root) and not inputs.model.training
    assert load_for_analysis(checkpoint, synth_root, image_size=24).dataset[0][0].shape == (3, 24, 24)


def test_load_for_analysis_rejects_a_dataset_of_other_classes(tmp_path: Path, synth_root: Path) -> None:
    model = create_model("simplenet", num_classes=7)
    path = save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict()}, tmp_path / "m.pt")
    with pytest.raises(MiniPlacesError, match="predicts 7 classes"):
        load_for_analysis(path, synth_root)


def test_saliency_report_counts_what_the_model_gets_right(checkpoint: Path, synth_root: Path,
                                                          tmp_path: Path) -> None:
    inputs = load_for_analysis(checkpoint, synth_root)
    report = saliency_report(inputs, tmp_path, n=5, title="t")
    x = torch.stack([inputs.dataset[i][0] for i in range(5)])
    expected = inputs.model(x).argmax(1).tolist()
    assert report.path == tmp_path / "saliency_vanilla.png" and report.images == 5
    assert report.predicted == expected
    assert report.labels == [inputs.dataset[i][1] for i in range(5)]
    assert report.correct == sum(p == t for p, t in zip(expected, report.labels, strict=True))
    with Image.open(report.path) as image:
        assert image.format == "PNG"


def test_attack_report_without_a_sweep(checkpoint: Path, synth_root: Path, tmp_path: Path) -> None:
    inputs = load_for_analysis(checkpoint, synth_root)
    report = attack_report(inputs, AttackSpec.from_mode("fgsm", eps=4 / 255), tmp_path, limit=5, grid=2)
    written = json.loads(report.files.result.read_text())
    assert AttackResult.read(report.files.result) == report.result and written["images"] == 5
    # The source is recorded, `limit` as asked; `model` is the checkpoint's entry.
    assert (written["split"], written["limit"], written["checkpoint"]) == ("val", 5, str(checkpoint))
    assert written["model"] == {"name": "simplenet", "kwargs": {"num_classes": 4}}
    assert report.sweep is None and not (tmp_path / "sweep.json").exists()
    assert report.files.grid == tmp_path / "attack_grid.png" and report.files.grid.is_file()
    assert settings_line(report.result.settings) == "fgsm, ε = 4/255"


def test_reports_go_into_the_checkpoints_run_by_default(checkpoint: Path, synth_root: Path) -> None:
    inputs = load_for_analysis(checkpoint, synth_root)
    run = RunDir.of_checkpoint(checkpoint)
    assert saliency_report(inputs, n=2).path == run.saliency / "saliency_vanilla.png"
    report = attack_report(inputs, AttackSpec.from_mode("fgsm", eps=2 / 255), limit=100, grid=2)
    assert report.files.result == run.attack.result and run.attack.grid.is_file()
    # A limit above the split's size attacks the whole split and is recorded as asked.
    assert report.result.images == len(inputs.dataset) < 100 and report.result.source.limit == 100


@pytest.mark.parametrize("mode", ["untargeted", "least-likely"])
def test_attack_at_eps_equals_the_sweep_row_it_is_taken_from(checkpoint: Path, synth_root: Path, tmp_path: Path,
                                                             mode: str) -> None:
    inputs = load_for_analysis(checkpoint, synth_root)
    eps = 4 / 255
    spec = AttackSpec.from_mode(mode, eps=eps, steps=2)
    report = attack_report(inputs, spec, tmp_path, limit=6, batch_size=4, grid=2, sweep=[0.0, eps], seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(inputs.dataset, range(6)), batch_size=4)
    expected = AttackResult.from_scores(evaluate_attack(inputs.model, loader, spec),
                                        report.result.source)
    assert report.result == expected
    sweep = Sweep.read(report.files.sweep)
    assert sweep == report.sweep and sweep.source.seed == 0  # type: ignore[union-attr]
    assert [row.eps for row in sweep.rows] == [0.0, eps] and report.files.sweep_plot.is_file()
