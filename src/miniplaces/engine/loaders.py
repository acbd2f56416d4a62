"""Training and validation batches for the engine: the per-sample DataLoader or the decoded cache.

The DataLoader path is repeatable and resumable mid-epoch: the sampler shuffles like
`DistributedSampler` (a permutation seeded by seed + epoch, one shard per process) and
can start at any position, and each sample's augmentation is drawn from its own seed
(seed, epoch, index), so a batch does not depend on the worker that made it or on the
batches before it.

The cache path builds the decoded cache when it is missing or stale; under DDP only rank 0
builds it while the other processes wait, then every process opens it.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from miniplaces.config import TrainConfig
from miniplaces.data import MiniPlaces, resize_for, train_transform, val_transform
from miniplaces.engine.distributed import DistInfo, all_gather_objects
from miniplaces.errors import MiniPlacesError

Batch = tuple[torch.Tensor, torch.Tensor]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, sample)."""
    return (seed * 1_000_003 + epoch * 10_000_019 + index * 7_919 + 1) % (2**63 - 1)


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` that yields `(index, sample_seed, side)` and can skip the first `start` samples.

    `side` (None: the transform's own) is the training side of the epoch: each item carries it to the
    worker process that loads it, so the image is made at that side directly.
    """

    def __init__(self, dataset: Dataset, *, rank: int, world_size: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0
        self.side: int | None = None

    def __iter__(self) -> Iterator[tuple[int, int, int | None]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start:]
        return iter([(i, sample_seed(self.seed, self.epoch, i), self.side) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededSamples(Dataset):
    """Wraps a dataset: item `(index, seed)` is `dataset[index]` transformed under `torch.manual_seed(seed)`.

    The global RNG is restored afterwards, so loading in the main process does not disturb training.
    """

    def __init__(self, dataset: Dataset, transforms: TrainTransforms | None = None) -> None:
        self.dataset = dataset
        self.transforms = transforms  # with it, the dataset gives PIL images and this transforms them at the side

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int] | tuple[int, int, int | None]) -> Any:
        index, seed, *side = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, label = self.dataset[index]
            if self.transforms is not None:
                image = self.transforms(side[0] if side else None)(image)
            return image, label


class TrainTransforms:
    """The per-sample training transform of a config at any side: `train_transform(side, resize_for(side))`.

    Called with a side (None: `image_size`), it returns that side's transform, built once per process.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.image_size = config.image_size
        self.options: dict[str, Any] = {"auto_augment": config.auto_augment, "random_erasing": config.random_erasing,
                                        **augment_strength(config)}
        self._built: dict[int, Any] = {}

    def __call__(self, side: int | None) -> Any:
        side = self.image_size if side is None else side
        if side not in self._built:
            self._built[side] = train_transform(side, resize_for(side), **self.options)
        return self._built[side]


def _worker_init(worker_id: int) -> None:
    # numpy and random are not seeded by DataLoader; derive them from the worker's torch seed.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def workers(config: TrainConfig) -> int:
    """Loader processes: as asked, but no more than the machine has cores."""
    return min(config.workers, os.cpu_count() or 1)


def per_process_batch(config: TrainConfig, info: DistInfo) -> int:
    if config.batch_size % info.world_size:
        raise MiniPlacesError(
            f"key 'batch_size' ({config.batch_size}) is the global batch and must divide evenly "
            f"over {info.world_size} processes"
        )
    return config.batch_size // info.world_size


def _cached(root: str, split: str, batch: int, *, train: bool, config: TrainConfig, info: DistInfo,
            device: torch.device, val_crop: bool = True) -> Any:
    """A `CachedLoader` of this process's shard; under DDP rank 0 alone builds the cache, the others wait."""
    from miniplaces.data.cache import CacheError
    from miniplaces.data.loader import build_cache, cached_loader

    side = cache_side(config)
    if info.enabled:
        # Several processes decoding into the same files would race; one builds, the rest wait for it.
        failure: Exception | None = None
        if info.is_main:
            try:
                build_cache(root, split, image_size=side)
            except Exception as err:  # every rank must reach the gather below, or the others wait forever
                failure = err
        # Gathering rank 0's outcome is also the barrier: nobody opens the files before they are written.
        outcome = all_gather_objects(None if failure is None else str(failure), info)[0]
        if failure is not None:
            raise failure
        if outcome is not None:
            raise CacheError(f"rank 0 could not build the {split} cache of {root}: {outcome}")
    extra: dict[str, Any] = ({"auto_augment": config.auto_augment, "random_erasing": config.random_erasing,
                              **augment_strength(config)} if train else {"val_crop": val_crop})
    return cached_loader(root, split, batch, train=train, device=device, seed=config.seed,
                         image_size=config.image_size, cache_size=side, rank=info.rank,
                         world_size=info.world_size, build=not info.enabled, **extra)


def cache_side(config: TrainConfig) -> int:
    """Side of the images the cache loader stores: `cache_size`, else `image_size`."""
    return config.cache_size if config.cache_size is not None else config.image_size


def augment_strength(config: TrainConfig) -> dict[str, float]:
    """The config's strength of the study's augmentation, as both loaders take it."""
    return {"crop_min_area": config.crop_min_area, "rotation": config.rotation, "color_jitter": config.color_jitter}


@dataclass
class TrainBatches:
    """The training batches of a run, positioned by `position(epoch, start_step)` before each epoch."""

    loader: Any
    sampler: ResumableSampler | None
    steps_per_epoch: int

    def position(self, epoch: int, start_step: int, side: int | None = None) -> Iterable[Batch]:
        """The epoch's batches from `start_step` on, made at `side` (progressive resizing; None: `image_size`)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            self.sampler.start = start_step * self.loader.batch_size
            self.sampler.side = side
            return self.loader
        self.loader.set_epoch(epoch)
        self.loader.set_side(side)
        # The cache loader draws each epoch deterministically: skipping batches replays it exactly.
        return itertools.islice(self.loader, start_step, None)


def first_images(batches: TrainBatches, count: int) -> torch.Tensor:
    """The first `count` training images of epoch 0 as the loader makes them (all of them when it has fewer)."""
    taken: list[torch.Tensor] = []
    seen = 0
    for x, _ in batches.position(0, 0):
        taken.append(x)
        seen += len(x)
        if seen >= count:
            break
    return torch.cat(taken)[:count]


def build_train_batches(config: TrainConfig, info: DistInfo, device: torch.device) -> TrainBatches:
    batch = per_process_batch(config, info)
    if config.loader == "cache":
        loader: Any = _cached(config.root, "train", batch, train=True, config=config, info=info, device=device)
        sampler = None
    else:
        dataset = MiniPlaces(config.root, "train")
        sampler = ResumableSampler(dataset, rank=info.rank, world_size=info.world_size, seed=config.seed)
        loader = DataLoader(
            SeededSamples(dataset, TrainTransforms(config)), batch_size=batch, sampler=sampler, drop_last=True,
            num_workers=workers(config), pin_memory=device.type == "cuda",
            persistent_workers=workers(config) > 0, worker_init_fn=_worker_init,
            generator=torch.Generator().manual_seed(config.seed),
        )
    steps = len(loader)
    if config.limit_train_batches is not None:
        steps = min(steps, config.limit_train_batches)
    if steps == 0:
        raise MiniPlacesError(
            f"the train split of {config.root} has fewer images than one batch of {batch} per process; "
            "lower batch_size"
        )
    return TrainBatches(loader, sampler, steps)


def build_val_batches(root: str, config: TrainConfig, info: DistInfo, device: torch.device,
                      split: str = "val", batch_size: int | None = None, uncropped: bool = False) -> Any:
    """Validation batches; each process takes every world_size-th image (no padding, so no image counts twice).

    `uncropped`: images resized to `resize_for(image_size)` without the centre crop, for multi-crop
    test-time augmentation (`engine.train.tta_logits`).
    """
    batch = batch_size if batch_size is not None else per_process_batch(config, info)
    if config.loader == "cache":
        return _cached(root, split, batch, train=False, config=config, info=info, device=device,
                       val_crop=not uncropped)
    side = resize_for(config.image_size)
    transform = val_transform(side, side) if uncropped else val_transform(config.image_size, side)
    dataset = MiniPlaces(root, split, transform=transform)
    return DataLoader(dataset, batch_size=batch, sampler=list(range(info.rank, len(dataset), info.world_size)),
                      num_workers=workers(config), pin_memory=device.type == "cuda")
