"""The fast recipe (`configs/fast.yaml`) and the pieces of `miniplaces bench recipes` that its claims rest on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from miniplaces.bench.recipes import CONFIGS, RECIPES, _row, recipe_config
from miniplaces.config import load_config, resolve
from miniplaces.errors import MiniPlacesError
from miniplaces.models import create_model, model_card
from miniplaces.models.summary import count_macs
from miniplaces.records import MetricsRow, write_metrics
from miniplaces.rundir import RunDir
from miniplaces.workflows.train import train_size

TORCH_THREADS = 1
FAST = CONFIGS / "fast.yaml"
STUDY = CONFIGS / "simplenet.yaml"


def test_fast_recipe_loads_resolves_and_uses_the_features_it_names() -> None:
    fast, study = (resolve(load_config(path, ["root=x"])) for path in (FAST, STUDY))
    # A lighter augmentation than the study's, as the recipe says: a 10-epoch run underfits.
    assert fast.crop_min_area > study.crop_min_area and fast.rotation == 0 < study.rotation
    assert fast.color_jitter < study.color_jitter and fast.auto_augment == "none"
    assert fast.mixup_alpha == fast.cutmix_alpha == 0
    assert fast.model_kwargs.get("weights") is None  # from scratch
    assert fast.ema and fast.label_smoothing == 0.1 and fast.channels_last and fast.loader == "cache"
    assert fast.warmup_epochs < study.warmup_epochs and fast.lr > study.lr and fast.epochs <= 10
    # Progressive resizing only for a CNN, which trains at any side.
    assert fast.progressive_start_size is not None and fast.progressive_start_size < fast.image_size
    assert model_card(fast.model).family == "cnn" and model_card(fast.model).size_argument is None
    # airbench's whitening layer: set from the data, then frozen; the cache keeps MiniPlaces' own 128 px.
    assert fast.data_init and fast.model_kwargs.get("freeze_stem") and fast.cache_size == 128


def test_fast_recipe_trains_a_batchnorm_cnn_at_smaller_sides_first() -> None:
    fast = load_config(FAST)
    model = create_model(fast.model, num_classes=100, **fast.model_kwargs)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    config = recipe_config(FAST, root="x", image_size=64, epochs=10, out_dir="runs", name="n",
                           device=torch.device("cpu"))
    sides = [train_size(config, epoch) for epoch in range(config.epochs)]
    # From 5/8 of the side up, never at the validation side itself (a last epoch there cost points).
    assert sides == [40] * 4 + [48] * 3 + [56] * 3
    # Its MACs per image exceed SimpleNet's; channels-last and the smaller early sides pay for them. Whether
    # that holds in time is measured, not asserted: `miniplaces bench recipes` (docs/benchmarks.md).
    per_image = sum(count_macs(model, side) for side in sides) / len(sides)
    assert per_image < count_macs(model, 64)


def test_recipe_config_sets_the_benchmark_budget_and_scales_the_progressive_start(tmp_path: Path) -> None:
    config = recipe_config(FAST, root=tmp_path, image_size=64, epochs=3, out_dir=tmp_path / "runs", name="r",
                           device=torch.device("cpu"), limit_train_batches=5, batch_size=32)
    assert (config.root, config.image_size, config.epochs, config.name) == (str(tmp_path), 64, 3, "r")
    assert (config.limit_train_batches, config.batch_size, config.device) == (5, 32, "cpu")
    assert config.progressive_start_size == 40  # 80 of 128 → 40 of 64
    assert (config.progressive_start_epoch, config.progressive_end_epoch) == (0, 3)  # 10 of 10 epochs → 3 of 3
    tiny = recipe_config(FAST, root=tmp_path, image_size=16, epochs=1, out_dir=tmp_path, name="t",
                         device=torch.device("cpu"))
    assert tiny.progressive_start_size == 16
    # Limits counted in batches of the baseline's 256: a recipe of batch 64 sees the same images.
    halved = recipe_config(FAST, root=tmp_path, image_size=64, epochs=1, out_dir=tmp_path, name="h",
                           device=torch.device("cpu"), limit_train_batches=5, limit_val_batches=3, batch_size=64,
                           limit_batch_size=256)
    assert (halved.limit_train_batches, halved.limit_val_batches) == (20, 12)
    odd = recipe_config(FAST, root=tmp_path, image_size=64, epochs=1, out_dir=tmp_path, name="o",
                        device=torch.device("cpu"), limit_train_batches=1, limit_val_batches=1, batch_size=96,
                        limit_batch_size=256)
    assert (odd.limit_train_batches, odd.limit_val_batches) == (2, 3)  # ≤ 256 training, ≥ 256 val images
    study = recipe_config(STUDY, root=tmp_path, image_size=64, epochs=3, out_dir=tmp_path, name="s",
                          device=torch.device("cpu"))
    assert study.progressive_start_size is None and study.batch_size == 256 and not study.ema
    # The baseline first, in float32; the fast recipe in both precisions.
    assert [(name, precision) for _, name, precision in RECIPES] == [
        ("simplenet.yaml", "float32"), ("fast.yaml", "float32"), ("fast.yaml", "bf16")]
    with pytest.raises(MiniPlacesError, match="recipe file .*nope.yaml does not exist"):
        recipe_config(tmp_path / "nope.yaml", root=tmp_path, image_size=64, epochs=1, out_dir=tmp_path, name="x",
                      device=torch.device("cpu"))


def _metrics_row(epoch: int, top1: float, top1_ema: float | None, images_per_s: float) -> MetricsRow:
    return MetricsRow(epoch=epoch, train_loss=1.0, train_top1=1.0, train_top5=1.0, val_loss=1.0, val_top1=top1,
                      val_top5=top1 + 10, lr=0.1, epoch_time_s=1.0, images_per_s=images_per_s,
                      peak_memory_mb=1.0, peak_memory_kind="rss", val_loss_ema=None if top1_ema is None else 1.0,
                      val_top1_ema=top1_ema, val_top5_ema=None if top1_ema is None else top1_ema + 5)


def test_row_reads_the_ema_accuracy_and_averages_seconds_per_image(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    write_metrics(run.metrics, [_metrics_row(1, 10.0, 30.0, 100.0), _metrics_row(2, 20.0, 25.0, 400.0)])
    config = recipe_config(FAST, root=tmp_path, image_size=64, epochs=2, out_dir=tmp_path, name="run",
                           device=torch.device("cpu"))
    row = _row("fast", config, run, wall_s=3.0)
    assert row["recipe"] == "fast (EMA)" and (row["top1"], row["top5"]) == (25.0, 30.0)
    assert (row["best_top1"], row["best_top5"], row["raw_top1"]) == (30.0, 35.0, 20.0)
    assert row["seconds_per_image"] == pytest.approx((1 / 100 + 1 / 400) / 2)
    assert [(e["epoch"], e["side"], e["images_per_s"], e["top1"]) for e in row["per_epoch"]] == [
        (1, 40, 100.0, 30.0), (2, 48, 400.0, 25.0)]
    assert row["sides"] == [40, 48]  # the recipe's progressive epochs, scaled from its 10 to these 2
