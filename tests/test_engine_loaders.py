"""The engine's cache path under DDP: rank 0 alone builds the cache, the other ranks wait, then all open it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import miniplaces.data.loader as data_loader
import miniplaces.engine.loaders as engine_loaders
from miniplaces.config import TrainConfig
from miniplaces.data.cache import CacheError, cache_state
from miniplaces.engine.distributed import DistInfo
from miniplaces.engine.loaders import build_train_batches, build_val_batches

CPU = torch.device("cpu")


@pytest.fixture()
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records cache builds and cross-process synchronisations, in order; the gather answers for rank 0."""
    log: list[str] = []
    real_build = data_loader.build_cache

    def build(*args: Any, **kwargs: Any) -> Any:
        log.append("build")
        return real_build(*args, **kwargs)

    def gather(obj: Any, info: DistInfo) -> list[Any]:
        log.append("sync")
        return [obj if info.is_main else None] + [None] * (info.world_size - 1)

    monkeypatch.setattr(data_loader, "build_cache", build)
    monkeypatch.setattr(engine_loaders, "all_gather_objects", gather)
    return log


@pytest.fixture()
def root(synth_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synth_root, tmp_path / "data"))  # the cache is written under <root>/cache


def config(root: Path) -> TrainConfig:
    return TrainConfig(root=str(root), loader="cache", batch_size=8, image_size=32, workers=0, device="cpu")


def test_single_process_builds_the_cache_itself(root: Path, events: list[str]) -> None:
    batches = build_train_batches(config(root), DistInfo(), CPU)
    assert events == ["build"]
    assert batches.steps_per_epoch == 48 // 8


def test_rank_zero_builds_then_syncs_and_other_ranks_only_wait(root: Path, events: list[str]) -> None:
    rank0, rank1 = DistInfo(rank=0, world_size=2), DistInfo(rank=1, local_rank=1, world_size=2)
    train0 = build_train_batches(config(root), rank0, CPU)
    assert events == ["build", "sync"]  # the sync comes after the build: the files are complete
    assert cache_state(root, "train", image_size=32) == "current"
    build_val_batches(str(root), config(root), rank0, CPU)
    events.clear()
    train1 = build_train_batches(config(root), rank1, CPU)
    val1 = build_val_batches(str(root), config(root), rank1, CPU)
    assert events == ["sync", "sync"]  # rank 1 never builds
    first0, first1 = next(iter(train0.loader)), next(iter(train1.loader))
    assert first0[0].shape == first1[0].shape == (4, 3, 32, 32)  # 8 images globally, 4 per rank
    assert not torch.equal(first0[1], first1[1])  # different shards
    assert sum(len(y) for _, y in val1) == 16 // 2


def test_a_failed_build_on_rank_zero_reaches_every_rank(root: Path, events: list[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "train.txt").write_text("train/missing.jpg 0\n")
    with pytest.raises(Exception, match="missing.jpg"):
        build_train_batches(config(root), DistInfo(rank=0, world_size=2), CPU)
    assert events == ["build", "sync"]  # rank 0 still joined the others before raising

    def gather(obj: Any, info: DistInfo) -> list[Any]:
        return ["cannot read train/missing.jpg", None]

    monkeypatch.setattr(engine_loaders, "all_gather_objects", gather)
    with pytest.raises(CacheError, match="rank 0 could not build the train cache .*missing.jpg"):
        build_train_batches(config(root), DistInfo(rank=1, world_size=2), CPU)


@pytest.mark.parametrize("loader", ["cache", "dataloader"])
def test_augmentation_strength_keys_reach_the_training_loader(root: Path, loader: str) -> None:
    light = TrainConfig(root=str(root), loader=loader, batch_size=8, image_size=32, workers=0, device="cpu",
                        crop_min_area=0.5, rotation=0.0, color_jitter=0.0)
    batches = build_train_batches(light, DistInfo(), CPU).loader
    if loader == "cache":
        assert batches.strength == {"scale": (0.5, 1.0), "degrees": 0.0, "jitter": 0.0}
    else:
        steps = batches.dataset.transforms(None).transforms  # the transform at image_size
        names = [type(t).__name__ for t in steps]
        assert "RandomRotation" not in names and "ColorJitter" not in names
        assert steps[names.index("RandomResizedCrop")].scale == (0.5, 1.0)


def test_cache_size_stores_larger_images_and_validates_like_the_per_sample_loader(root: Path) -> None:
    from miniplaces.data.dataset import MiniPlaces
    from miniplaces.data.transforms import resize_for, val_transform

    def val_images(**changes: Any) -> torch.Tensor:
        cfg = TrainConfig(root=str(root), loader="cache", batch_size=8, image_size=16, workers=0, device="cpu",
                          **changes)
        return torch.cat([x for x, _ in build_val_batches(str(root), cfg, DistInfo(), CPU)])

    shutil.rmtree(root / "cache", ignore_errors=True)  # the copy may hold caches other tests built
    stored = TrainConfig(root=str(root), loader="cache", batch_size=8, image_size=16, workers=0, device="cpu",
                         cache_size=32)
    x, _ = next(iter(build_train_batches(stored, DistInfo(), CPU).loader))
    assert x.shape == (8, 3, 16, 16)  # batches at image_size, from images stored at cache_size
    assert cache_state(root, "train", image_size=32) == "current"
    assert cache_state(root, "train", image_size=16) != "current"
    # The per-sample pipeline resizes the decoded 32-px JPEG to 18 and crops 16: a cache of the images' own
    # side gives the same pixels (up to uint8 rounding), a cache of 16-px images only a blurred copy.
    dataset = MiniPlaces(root, "val", transform=val_transform(16, resize_for(16)))
    oracle = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert (val_images(cache_size=32) - oracle).abs().max() < 1.5 / 255
    assert (val_images() - oracle).abs().max() > 10 / 255
