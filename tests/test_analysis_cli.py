"""`miniplaces attack` and `miniplaces saliency` end to end on a checkpoint saved by the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from miniplaces.cli import main
from miniplaces.data import read_categories
from miniplaces.engine.checkpoint import describe_model, save_checkpoint
from miniplaces.models import create_model
from miniplaces.rundir import RunDir

FAST = ["--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, synth_root: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("simplenet", num_classes=4)
    path = tmp_path_factory.mktemp("run") / "runs" / "tiny" / "checkpoints" / "last.pt"
    # The engine saves its config: the CLI takes the image size from it (32 here, fast).
    return save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(),
                            "categories": read_categories(synth_root), "config": {"image_size": 32}}, path)


def test_attack_writes_json_grid_and_sweep(checkpoint: Path, synth_root: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["attack", "--checkpoint", str(checkpoint), "--root", str(synth_root), "--mode", "untargeted",
                 "--eps", "4/255", "--steps", "2", "--limit", "6", "--batch-size", "4", "--grid", "3",
                 "--sweep", "0,2/255,4/255", *FAST])
    assert code == 0
    out = checkpoint.parent.parent / "attack"
    result = json.loads((out / "attack.json").read_text())
    for key in ("clean_top1", "clean_top5", "adv_top1", "adv_top5", "success_rate", "success_definition",
                "mean_linf", "mean_l2", "mode", "eps", "eps_text", "steps", "step_size", "random_start",
                "images", "checkpoint", "model", "split"):
        assert key in result, key
    assert result["images"] == 6 and result["mode"] == "untargeted" and result["eps_text"] == "4/255"
    assert result["image_size"] == 32
    assert result["step_size"] == pytest.approx(0.4 / 255) and result["model"]["name"] == "simplenet"
    assert result["mean_linf"] <= 4 / 255 + 1e-6
    assert result["adv_top1"] <= result["clean_top1"]
    sweep = json.loads((out / "sweep.json").read_text())
    assert [row["eps_text"] for row in sweep["rows"]] == ["0", "2/255", "4/255"]
    assert sweep["rows"][0]["adv_top1"] == sweep["rows"][0]["clean_top1"]
    for name in ("attack_grid.png", "sweep.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
    printed = capsys.readouterr().out
    assert "untargeted PGD, ε = 4/255, 2 steps of 0.4/255 on 6 val images" in printed
    assert "adversarial  top-1" in printed and str(out / "sweep.png") in printed


def test_attack_fgsm_to_a_chosen_folder(checkpoint: Path, synth_root: Path, tmp_path: Path) -> None:
    assert main(["attack", "--checkpoint", str(checkpoint), "--root", str(synth_root), "--mode", "fgsm",
                 "--eps", "0.0235", "--limit", "4", "--grid", "2", "--out", str(tmp_path / "o"), *FAST]) == 0
    result = json.loads((tmp_path / "o" / "attack.json").read_text())
    assert result["steps"] == 1 and result["step_size"] == result["eps"] == 0.0235
    assert (tmp_path / "o" / "attack_grid.png").is_file() and not (tmp_path / "o" / "sweep.json").exists()


@pytest.mark.parametrize("method", ["vanilla", "smoothgrad", "gradcam"])
def test_saliency_writes_a_grid(checkpoint: Path, synth_root: Path, method: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["saliency", "--checkpoint", str(checkpoint), "--root", str(synth_root), "--method", method,
                 "--n", "3", "--samples", "2", *FAST]) == 0
    path = checkpoint.parent.parent / "saliency" / f"saliency_{method}.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
    assert f"wrote {path}" in capsys.readouterr().out


@pytest.mark.parametrize(("command", "extra", "message"), [
    ("attack", ["--eps", "6"], "did you mean 6/255"),
    ("attack", ["--sweep", "0,x"], "cannot read ε 'x'"),
    ("attack", ["--limit", "0"], "--limit: must be ≥ 1"),
    ("saliency", ["--method", "gradcam", "--layer", "fc"], "'fc' gives"),
    ("saliency", ["--method", "gradcam", "--layer", "fc"], "--layer NAME picks the layer"),
    ("saliency", ["--method", "gradcam", "--layer", "nope"], "no layer named 'nope'"),
])
def test_bad_options_are_errors(checkpoint: Path, synth_root: Path, capsys: pytest.CaptureFixture[str],
                                command: str, extra: list[str], message: str) -> None:
    try:
        code = main([command, "--checkpoint", str(checkpoint), "--root", str(synth_root), *extra, *FAST])
    except SystemExit as exit_:  # a flag's type refuses it in argparse
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_and_mismatched_dataset(tmp_path: Path, synth_root: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["attack", "--checkpoint", str(tmp_path / "no.pt"), "--root", str(synth_root), *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err
    model = create_model("simplenet", num_classes=7)
    path = save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(), "categories": []},
                           tmp_path / "seven.pt")
    assert main(["saliency", "--checkpoint", str(path), "--root", str(synth_root), *FAST]) == 2
    assert "predicts 7 classes" in capsys.readouterr().err


def test_run_dir(tmp_path: Path) -> None:
    of = RunDir.of_checkpoint
    assert of(tmp_path / "runs" / "a" / "checkpoints" / "best.pt") == RunDir((tmp_path / "runs" / "a").resolve())
    assert of(tmp_path / "loose" / "model.pt").path == (tmp_path / "loose").resolve()
