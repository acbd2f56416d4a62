"""`init_from` (`train --init-from`, issue 22): a new run from another run's weights, as timm's
`--initial-checkpoint`: the first step sees exactly the source model, a new classifier replaces the source's when
the class counts differ, and another model is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from tiny_runs import config, interrupt_at_step, tiny_dataset

from miniplaces.cli import main
from miniplaces.data.synth import synthesize
from miniplaces.engine.checkpoint import CheckpointError, describe_model, load_checkpoint, save_checkpoint
from miniplaces.engine.loop import Trainer
from miniplaces.models import create_model
from miniplaces.models.io import load_model_any
from miniplaces.workflows.train import TrainingInterrupted, train


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("init_synth"))


@pytest.fixture(scope="module")
def source(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained 4-class SimpleNet run: the weights the fine-tuning runs start from."""
    return train(config(data, tmp_path_factory.mktemp("source"), epochs=3, limit_val_batches=1), progress=False)


def first_step(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Records the first training step's batch, the model's weights before it, and the loss it computed."""
    seen: dict[str, object] = {}
    step = Trainer.step

    def recording(self: Trainer, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = not seen
        if first:
            seen.update(x=x.clone(), target=target.clone(),
                        weights={k: v.clone() for k, v in self.plain.state_dict().items()})
        loss, logits = step(self, x, target)
        if first:
            seen["loss"] = loss.item()
        return loss, logits

    monkeypatch.setattr(Trainer, "step", recording)
    return seen


def test_the_first_step_starts_from_the_source_model(data: Path, source: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen = first_step(monkeypatch)
    # Another schedule and optimiser than the source's: a fine-tuning run of its own.
    run = train(config(data, tmp_path, epochs=1, lr=0.01, optimizer="adamw", log_every=1, limit_val_batches=1,
                       init_from=str(source)), progress=False)
    model, _ = load_model_any(source)  # the run folder's best.pt
    model.train()  # as the step runs it: BatchNorm on the batch's statistics
    with torch.no_grad():
        expected = F.cross_entropy(model(seen["x"]), seen["target"]).item()
    steps = EventAccumulator(str(run / "tb" / "steps")).Reload()
    assert steps.Scalars("step/loss")[0].value == pytest.approx(expected, rel=1e-5)
    assert seen["loss"] == pytest.approx(expected, rel=1e-6)
    # A model that did not start from the source sees another loss on the same batch.
    fresh = create_model("simplenet", num_classes=4, image_size=32).train()
    with torch.no_grad():
        assert abs(F.cross_entropy(fresh(seen["x"]), seen["target"]).item() - expected) > 1e-3
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["init_from"] == str(source) and saved["optimizer"] == "adamw"  # what a resume reads back


def test_other_class_count_gets_a_new_classifier_on_the_source_body(source: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    six = synthesize(tmp_path / "six", classes=6, per_class=8, val_per_class=4, image_size=32, seed=2)
    seen = first_step(monkeypatch)
    train(config(six, tmp_path / "runs", epochs=1, limit_val_batches=1, init_from=str(source / "checkpoints" /
                                                                                        "best.pt")), progress=False)
    body = load_checkpoint(source / "checkpoints" / "best.pt")["state_dict"]
    start = seen["weights"]
    assert start["fc.weight"].shape == (6, body["fc.weight"].shape[1]) and start["fc.bias"].shape == (6,)
    assert set(start) == set(body)
    for key, value in body.items():
        if not key.startswith("fc."):
            assert torch.equal(start[key], value), key


def test_another_model_is_refused_in_one_line_before_anything_is_written(data: Path, source: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--model", "fastnet", "--root", str(data), "--name", "ft", "--init-from", str(source),
                 "--set", f"out_dir={tmp_path}", "--set", "image_size=32", "--set", "device=cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: key 'init_from': ") and "holds a 'simplenet' model" in err and "'fastnet'" in err
    assert not (tmp_path / "ft").exists()
    code = main(["train", "--root", str(data), "--init-from", str(tmp_path / "nothing"), "--set",
                 f"out_dir={tmp_path}"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_other_model_kwargs_are_refused_before_anything_is_written(data: Path, tmp_path: Path) -> None:
    small = create_model("fastnet", num_classes=4, widths=[8, 16], stem_width=8)
    path = save_checkpoint({"model": describe_model(small), "state_dict": small.state_dict(), "epoch": 1},
                           tmp_path / "small.pt")
    wider = config(data, tmp_path / "runs", model="fastnet", init_from=str(path),
                   model_kwargs={"widths": [8, 32], "stem_width": 8})
    with pytest.raises(CheckpointError, match=r"key 'init_from': the weights of .*small.pt do not fit this run's "
                                              r"model .*size mismatch"):
        train(wider, progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_fine_tuning_run_resumes_exactly_and_the_flag_is_the_key(data: Path, source: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    tuned = {"init_from": str(source), "lr": 0.01, "limit_val_batches": 1}
    reference = train(config(data, tmp_path / "a", **tuned), progress=False)
    with pytest.raises(TrainingInterrupted):
        train(config(data, tmp_path / "b", **tuned), on_step=interrupt_at_step(2), progress=False)
    # The resume reads init_from back from the checkpoint's config and continues from last.pt, not the source.
    assert main(["train", "--resume", str(tmp_path / "b" / "run")]) == 0
    done, expected = (load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]
                      for run in (tmp_path / "b" / "run", reference))
    assert all(torch.equal(done[key], expected[key]) for key in expected)
    capsys.readouterr()
    assert main(["train", "--root", str(data), "--init-from", "runs/base", "--print-config"]) == 0
    assert "init_from: runs/base\n" in capsys.readouterr().out
