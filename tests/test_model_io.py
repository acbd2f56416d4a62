"""`miniplaces.models.io`: a checkpoint file, a run folder or an export folder, resolved and loaded in one place;
every command that runs a trained model takes a run folder as `--checkpoint` (its checkpoints/best.pt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_runs import config, tiny_dataset

from miniplaces.cli import main
from miniplaces.engine.checkpoint import CheckpointError, load_model
from miniplaces.models import io as mio
from miniplaces.workflows.train import train


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run: runs/run with checkpoints/best.pt and last.pt."""
    run = train(config(data, tmp_path_factory.mktemp("runs"), epochs=1), progress=False)
    assert (run / "checkpoints" / "best.pt").is_file()
    return run


def test_resolution(trained: Path, tmp_path: Path) -> None:
    best = trained / "checkpoints" / "best.pt"
    assert mio.resolve_model_path(trained) == best
    assert mio.resolve_model_path(best) == best
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    assert mio.resolve_model_path(export) == export  # an export folder is loaded as itself (and checked then)


def test_resolution_errors_say_what_was_found(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint .*nothing\.pt does not exist; give a checkpoint file, "
                                              "a run folder or an export folder"):
        mio.resolve_model_path(tmp_path / "nothing.pt")
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "checkpoints" / "last.pt").write_bytes((trained / "checkpoints" / "last.pt").read_bytes())
    with pytest.raises(CheckpointError, match=r"run folder .*unfinished has no checkpoints/best\.pt; give one of its "
                                              r"checkpoints \(last\.pt\) as a file"):
        mio.resolve_model_path(unfinished)
    (unfinished / "checkpoints" / "last.pt").unlink()
    with pytest.raises(CheckpointError, match="it has no checkpoint yet"):
        mio.resolve_model_path(unfinished)
    with pytest.raises(mio.ExportError, match="neither a run folder nor an export folder"):
        mio.resolve_model_path(tmp_path)


def test_a_run_folder_loads_its_best_checkpoint(trained: Path) -> None:
    model, payload = mio.load_model_any(trained)
    expected, saved = load_model(trained / "checkpoints" / "best.pt")
    assert payload["epoch"] == saved["epoch"] and not model.training
    for (name, got), want in zip(model.state_dict().items(), expected.state_dict().values(), strict=True):
        assert torch.equal(got, want), name


def test_eval_takes_a_run_folder(trained: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = trained / "checkpoints" / "eval_val.json"
    written.unlink(missing_ok=True)
    assert main(["eval", "--checkpoint", str(trained), "--root", str(data), "--workers", "0", "--device", "cpu"]) == 0
    assert f"written: {written}" in capsys.readouterr().out
    assert json.loads(written.read_text())["checkpoint"] == str(trained / "checkpoints" / "best.pt")


def test_saliency_and_attack_take_a_run_folder(trained: Path, data: Path) -> None:
    common = ["--checkpoint", str(trained), "--root", str(data), "--device", "cpu"]
    assert main(["saliency", *common, "--n", "2"]) == 0
    assert (trained / "saliency" / "saliency_vanilla.png").is_file()  # the run's folder, not runs/saliency
    assert main(["attack", *common, "--limit", "2", "--steps", "1", "--grid", "2"]) == 0
    result = json.loads((trained / "attack" / "attack.json").read_text())
    assert result["checkpoint"] == str(trained / "checkpoints" / "best.pt")


def test_predict_takes_a_run_folder(trained: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = [str(p) for p in sorted((data / "images" / "val").rglob("*.jpg"))[:3]]
    outputs = []
    for source in (trained, trained / "checkpoints" / "best.pt"):
        assert main(["predict", "--checkpoint", str(source), "--device", "cpu", "--json", *images]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1] and len(outputs[0]) == 3


def test_export_takes_a_run_folder(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("safetensors")
    assert main(["export", "--checkpoint", str(trained), "--format", "safetensors"]) == 0
    folder = trained / "export" / "safetensors"  # the run's default export folder
    assert str(folder / "model.safetensors") in capsys.readouterr().out
    model, _ = mio.load_model_any(folder)
    expected, _ = load_model(trained / "checkpoints" / "best.pt")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected(x))


def test_serve_takes_a_run_folder(trained: Path, data: Path) -> None:
    pytest.importorskip("werkzeug")
    from miniplaces.serve.app import build_app

    app = build_app([trained], data, threads=1)
    try:
        (served,) = app.models.values()
    finally:
        app.worker.close()
    assert served.name == "simplenet" and served.checkpoint == trained
    expected, _ = load_model(trained / "checkpoints" / "best.pt")
    assert all(torch.equal(a, b) for a, b in zip(served.model.state_dict().values(),
                                                 expected.state_dict().values(), strict=True))


def test_an_export_folder_is_evaluated_and_explained_into_itself(trained: Path, data: Path, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    folder = tmp_path / "shared_model"
    assert main(["export", "--checkpoint", str(trained), "--format", "safetensors", "--out", str(folder)]) == 0
    assert main(["eval", "--checkpoint", str(folder), "--root", str(data), "--workers", "0", "--device", "cpu"]) == 0
    from_export = json.loads((folder / "eval_val.json").read_text())
    assert main(["eval", "--checkpoint", str(trained), "--root", str(data), "--workers", "0", "--device", "cpu",
                 "--out", str(tmp_path / "best.json")]) == 0
    from_best = json.loads((tmp_path / "best.json").read_text())
    assert from_export["top1"] == from_best["top1"] and from_export["confusion"] == from_best["confusion"]
    assert main(["saliency", "--checkpoint", str(folder), "--root", str(data), "--device", "cpu", "--n", "2"]) == 0
    assert (folder / "saliency" / "saliency_vanilla.png").is_file()
