"""Training features beyond the study, end to end on tiny synthetic data: EMA, MixUp/CutMix,
automatic augmentation, progressive resizing, per-step TensorBoard scalars and metrics.csv."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import assert_same_state, config, interrupt_at_step, rows, tiny_dataset, without_timing
from torch import nn

from miniplaces.cli import main
from miniplaces.config import ConfigError, apply_overrides, resolve
from miniplaces.engine.checkpoint import build_model, load_checkpoint
from miniplaces.records import METRIC_KEYS
from miniplaces.workflows.evaluate import evaluate_checkpoint
from miniplaces.workflows.train import TrainingInterrupted, train

TORCH_THREADS = 1


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("features_synth"))


# ---------------------------------------------------------------- EMA


@pytest.fixture(scope="module", params=["dataloader", "cache"])
def ema_run(request: pytest.FixtureRequest, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A low decay so that a few steps move the average visibly.
    return train(config(data, tmp_path_factory.mktemp("ema"), ema=True, ema_decay=0.5, epochs=3,
                        loader=request.param), progress=False)


def test_ema_is_validated_checkpointed_and_is_what_best_holds(ema_run: Path, data: Path) -> None:
    metrics = rows(ema_run)
    assert all(list(r) == list(METRIC_KEYS) for r in metrics)
    assert all(r["val_top1_ema"] is not None and r["val_loss_ema"] != r["val_loss"] for r in metrics)
    last = load_checkpoint(ema_run / "checkpoints" / "last.pt")
    assert last["ema"]["updates"] == 9  # one per optimiser step: 3 epochs × 3 steps
    raw, averaged = last["state_dict"], last["ema"]["state_dict"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].is_floating_point())
    # best.pt is chosen by the EMA's val top-1, and evaluating it evaluates the EMA's weights.
    best_row = max(metrics, key=lambda r: r["val_top1_ema"])
    best = load_checkpoint(ema_run / "checkpoints" / "best.pt")
    assert best["epoch"] == best_row["epoch"] and best["best_top1"] == best_row["val_top1_ema"]
    report, _ = evaluate_checkpoint(ema_run / "checkpoints" / "best.pt", data, workers=0, progress=False)
    # `eval` validates per image; the cache loader's batched resize differs from it by < 1/255 a pixel.
    tolerance = 1e-5 if best["config"]["loader"] == "dataloader" else 1e-3
    assert report.loss == pytest.approx(best_row["val_loss_ema"], rel=tolerance)
    assert abs(report.loss - best_row["val_loss_ema"]) < abs(report.loss - best_row["val_loss"])
    for key, value in build_model(best).state_dict().items():
        assert torch.equal(value, best["ema"]["state_dict"][key]), key
    for key, value in build_model(best, ema=False).state_dict().items():
        assert torch.equal(value, best["state_dict"][key]), key


def test_run_without_ema_keeps_none(data: Path, tmp_path: Path) -> None:
    run = train(config(data, tmp_path, epochs=1), progress=False)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["ema"] is None
    assert all(r["val_top1_ema"] is None for r in rows(run))


@pytest.fixture(scope="module")
def reference_features(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run with EMA, MixUp/CutMix and progressive resizing, to reproduce exactly."""
    return train(config(data, tmp_path_factory.mktemp("ref_features"), **FEATURES), progress=False)


FEATURES = {"ema": True, "ema_decay": 0.5, "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "label_smoothing": 0.1,
            "progressive_start_size": 16, "random_erasing": 0.5, "auto_augment": "trivialaugment"}


def test_resumed_run_with_every_feature_is_bit_identical(data: Path, reference_features: Path, tmp_path: Path) -> None:
    # Stopped mid-epoch (step 2 of 3 in epoch 1), then resumed by the CLI from the checkpoint's config.
    with pytest.raises(TrainingInterrupted, match="after step 2/3"):
        train(config(data, tmp_path, **FEATURES), on_step=interrupt_at_step(2), progress=False)
    run = tmp_path / "run"
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_state(run / "checkpoints" / "last.pt", reference_features / "checkpoints" / "last.pt")
    assert without_timing(rows(run)) == without_timing(rows(reference_features))


def test_resume_in_epoch_two_is_bit_identical_on_the_cache_loader(data: Path, tmp_path: Path) -> None:
    changes = {**FEATURES, "loader": "cache"}
    reference = train(config(data, tmp_path / "a", **changes), progress=False)
    with pytest.raises(TrainingInterrupted, match="in epoch 2 after step 2/3"):  # step 5 of 3 per epoch
        train(config(data, tmp_path / "b", **changes), on_step=interrupt_at_step(5), progress=False)
    run = train(config(data, tmp_path / "b", **changes), resume=tmp_path / "b" / "run", progress=False)
    assert_same_state(run / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")
    assert without_timing(rows(run)) == without_timing(rows(reference))


# ---------------------------------------------------------------- MixUp / CutMix in the training step


class Recorder:
    """Records the inputs and targets the criterion sees during training."""

    def __init__(self, smoothing: float) -> None:
        self.loss = nn.CrossEntropyLoss(label_smoothing=smoothing)
        self.targets: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.targets.append(target.detach().clone())
        return self.loss(logits, target)


@pytest.mark.parametrize("loader", ["dataloader", "cache"])
def test_mixup_targets_are_soft_and_reach_the_loss(data: Path, tmp_path: Path, loader: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import miniplaces.engine.loop as loop

    recorder, given = Recorder(0.1), []
    monkeypatch.setattr(loop.nn, "CrossEntropyLoss", lambda label_smoothing: given.append(label_smoothing) or recorder)
    train(config(data, tmp_path, epochs=1, mixup_alpha=1.0, label_smoothing=0.1, loader=loader), progress=False)
    assert given == [0.1]  # the config's smoothing reaches the loss (test_engine_loop checks its value end to end)
    assert len(recorder.targets) == 3
    for target in recorder.targets:
        assert target.shape == (16, 4) and target.dtype == torch.float32
        assert torch.allclose(target.sum(1), torch.ones(16))
        # Soft: at least one sample carries two labels with weights strictly between 0 and 1.
        assert ((target > 0) & (target < 1)).any()


def test_feature_keys_are_validated_by_name(data: Path) -> None:
    bad = [({"ema_decay": 1.0}, "ema_decay"), ({"mixup_alpha": -1.0}, "mixup_alpha"),
           ({"mix_prob": 1.5}, "mix_prob"), ({"random_erasing": 2.0}, "random_erasing"),
           ({"progressive_start_size": 64}, "progressive_start_size"),
           ({"progressive_start_size": 16, "model": "vit"}, "built for one image side"),
           ({"progressive_start_epoch": 3, "progressive_end_epoch": 1}, "progressive_end_epoch"),
           ({"cutmix_alpha": 1.0, "adv_train": "pgd"}, "adversarial"),
           ({"crop_min_area": 0.0}, "crop_min_area"), ({"crop_min_area": 1.5}, "crop_min_area"),
           ({"rotation": -1.0}, "rotation"), ({"rotation": 181.0}, "rotation"),
           ({"color_jitter": 1.0}, "color_jitter"),
           ({"cache_size": 8, "loader": "cache"}, "cache_size"),
           ({"cache_size": 64, "loader": "dataloader"}, "cache_size.* loader is 'dataloader'")]
    for changes, message in bad:
        with pytest.raises(ConfigError, match=message):
            resolve(config(data, Path("unused"), **changes))
    with pytest.raises(ConfigError, match="auto_augment"):
        apply_overrides(config(data, Path("unused")), ["auto_augment=autoaugment"])


# ---------------------------------------------------------------- initialisation from data


@pytest.mark.parametrize("loader", ["dataloader", "cache"])
def test_data_init_whitens_the_stem_before_the_first_step(data: Path, tmp_path: Path, loader: str) -> None:
    small = {"widths": [8, 16], "stem_width": 8, "freeze_stem": True}
    run = train(config(data, tmp_path, model="fastnet", model_kwargs=small, data_init=True, epochs=1,
                       loader=loader), progress=False)
    weight = load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]["features.0.0.weight"]
    # Components and their negatives: set from the training images (a random init has no such pairs), and
    # frozen since (the steps would have moved the two halves apart).
    torch.testing.assert_close(weight[:4], -weight[4:])
    with pytest.raises(ConfigError, match="data_init.*simplenet"):
        resolve(config(data, Path("unused"), data_init=True))


def test_resumed_fast_recipe_run_is_bit_identical(data: Path, tmp_path: Path) -> None:
    # The fast recipe's own keys: a whitened, frozen stem (not set again on resume) and a cache of larger images.
    changes = {"model": "fastnet", "model_kwargs": {"widths": [8, 16], "stem_width": 8, "freeze_stem": True},
               "data_init": True, "loader": "cache", "image_size": 16, "cache_size": 32, "ema": True,
               "ema_decay": 0.5, "label_smoothing": 0.1}
    reference = train(config(data, tmp_path / "a", **changes), progress=False)
    with pytest.raises(TrainingInterrupted, match="after step 2/3"):
        train(config(data, tmp_path / "b", **changes), on_step=interrupt_at_step(2), progress=False)
    assert main(["train", "--resume", str(tmp_path / "b" / "run")]) == 0
    assert_same_state(tmp_path / "b" / "run" / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")
    assert without_timing(rows(tmp_path / "b" / "run")) == without_timing(rows(reference))


# ---------------------------------------------------------------- progressive resizing


@pytest.mark.parametrize("loader", ["dataloader", "cache"])
def test_progressive_resize_trains_small_first(data: Path, tmp_path: Path, loader: str) -> None:
    seen: list[tuple[bool, int]] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if getattr(module, "model_name", None) == "simplenet":
            seen.append((module.training, args[0].shape[-1]))

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        train(config(data, tmp_path, epochs=3, progressive_start_size=16, loader=loader, limit_val_batches=1),
              progress=False)
    finally:
        handle.remove()
    train_sides = [side for training, side in seen if training]
    val_sides = {side for training, side in seen if not training}
    # Epochs 0, 1, 2: 16, then halfway (24), then the full 32; validation always at 32.
    assert train_sides == [16] * 3 + [24] * 3 + [32] * 3
    assert val_sides == {32}


# ---------------------------------------------------------------- TensorBoard per step, metrics.csv


def test_metrics_csv_equals_jsonl_and_tensorboard_has_step_scalars(data: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(config(data, tmp_path, log_every=1), progress=False)
    with (run / "metrics.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == list(METRIC_KEYS)
    assert table == [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows(run)]

    epochs, steps = EventAccumulator(str(run / "tb")), EventAccumulator(str(run / "tb" / "steps"))
    epochs.Reload()
    steps.Reload()
    assert {"train/loss", "val/top1"} <= set(epochs.Tags()["scalars"])
    assert {"step/loss", "step/lr", "step/images_per_s"} <= set(steps.Tags()["scalars"])
    assert [e.step for e in steps.Scalars("step/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in epochs.Scalars("train/loss")] == [1, 2]
    assert all(e.value > 0 for e in steps.Scalars("step/images_per_s"))
    assert steps.Scalars("step/lr")[0].value == pytest.approx(0.05 / 3)  # the first warm-up step of three


def test_resumed_run_keeps_one_step_scalar_per_step(data: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def crash_in_epoch_two(step: int) -> None:
        crash_in_epoch_two.calls += 1  # type: ignore[attr-defined]
        if crash_in_epoch_two.calls == 5:  # type: ignore[attr-defined]  # in epoch 2, after step 4 was logged
            raise RuntimeError("crash")

    crash_in_epoch_two.calls = 0  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="crash"):
        train(config(data, tmp_path, log_every=1), on_step=crash_in_epoch_two, progress=False)
    # TensorBoard orders a folder's event files by name: seconds, host, pid, then an unpadded counter. Within
    # one second, counter 9 → 10 would sort the resumed file first; a new second orders them as written.
    time.sleep(1.1)
    run = train(config(data, tmp_path, log_every=1), resume=tmp_path / "run", progress=False)
    steps = EventAccumulator(str(run / "tb" / "steps"))
    steps.Reload()
    # Step 4 was logged before the crash and again after the resume from epoch 1: the first is purged.
    assert [e.step for e in steps.Scalars("step/loss")] == [1, 2, 3, 4, 5, 6]


def test_report_shows_the_ema_and_the_multi_crop_eval(ema_run: Path, data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from miniplaces.report import load_run
    from miniplaces.report.tables import results_rows, to_markdown

    run = Path(shutil.copytree(ema_run, tmp_path / "run"))
    report, _ = evaluate_checkpoint(run / "checkpoints" / "best.pt", data, tta="five-crop", workers=0,
                                    progress=False)
    row = results_rows([load_run(run)])[0]
    assert row["best_val_top1"] == max(r["val_top1_ema"] for r in rows(run)) and row["weights"] == "EMA"
    assert row["eval_top1"] == report.top1 and row["eval_tta"] == "five-crop"
    header = to_markdown([row], details=True).splitlines()[0]
    assert "Best raw val top-1 %" in header and "Eval TTA" in header
    from miniplaces.report import figures

    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda figure, path: (drawn.append(figure), save(figure, path))[1])
    assert figures.accuracy_curves([load_run(run)], tmp_path / "accuracy.png") is not None
    labels = [line.get_label() for line in drawn[0].axes[0].get_lines()]
    assert labels == ["run train", "run val", "run val EMA"]
    plain = {**row, "best_val_top1_raw": None, "eval_top1": None, "eval_tta": None}
    assert "raw val" not in to_markdown([plain], details=True) and "Eval" not in to_markdown([plain], details=True)
