"""Data loading throughput: the per-sample DataLoader (PIL decode + the study's `train_transform()`)
against the batched `CachedLoader` over the decoded cache, on the same split in the same run."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch


def find_real_root() -> Path | None:
    """`shared/miniplaces` in the nearest folder above the working directory or this checkout that has one
    (`../shared/miniplaces` for a clone beside it)."""
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parents[3]):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "miniplaces"
            if (candidate / "train.txt").is_file():
                return candidate
    return None


def images_per_second(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], count: int, warmup: int,
                      device: torch.device) -> tuple[float, float, int]:
    """Time `count` batches after `warmup` untimed ones; returns (images/s, seconds, images)."""
    iterator: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(batches)
    for _ in range(warmup):
        next(iterator)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    images, started = 0, time.perf_counter()
    for _ in range(count):
        x, _ = next(iterator)
        images += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return images / seconds, seconds, images


def run_data_benchmark(
    root: Path | str | None = None,
    batches: int = 20,
    batch_size: int = 256,
    warmup: int = 2,
    workers: int = 2,
    image_size: int = 128,
    devices: Iterable[str] | None = None,
    cache_dir: Path | str | None = None,
) -> list[dict[str, Any]]:
    """Images/second of the per-sample loader and of the cache loader on the train split.

    Args:
        root: dataset folder; default `../shared/miniplaces` when present (`find_real_root`), else a
            synthetic dataset just big enough, made in a temporary folder.
        batches: timed batches per loader, after `warmup` untimed ones (worker start-up, page-in).
        batch_size: images per batch.
        workers: DataLoader worker processes of the per-sample loader.
        image_size: output side (and cache image size).
        devices: where the cache loader makes batches (default: `cpu`, plus `cuda` when available).
        cache_dir: where the decoded cache lives (default: `build_cache`'s choice).

    Returns one row per loader: `loader`, `device`, `images_per_s`, `seconds`, `images`,
    `ratio` (to the per-sample loader), `data`, plus `cache_build_s` on the first cache row
    (0 when an up-to-date cache was reused).
    """
    from torch.utils.data import DataLoader

    from miniplaces.data.cache import build_cache, cache_state
    from miniplaces.data.dataset import MiniPlaces
    from miniplaces.data.loader import cached_loader
    from miniplaces.data.synth import synthesize
    from miniplaces.data.transforms import train_transform

    devices = list(devices) if devices is not None else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(prefix="miniplaces-bench-") as tmp:
        if root is None:
            root = find_real_root()
        if root is None:
            per_class = -(-(warmup + batches) * batch_size // 10)
            root = synthesize(Path(tmp) / "synth", classes=10, per_class=per_class, val_per_class=1,
                              image_size=image_size)
            data = f"synthetic (10 classes × {per_class}, {image_size}×{image_size})"
        else:
            data = str(root)
        root = Path(root)

        dataset = MiniPlaces(root, "train", transform=train_transform(image_size))
        per_sample = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                                generator=torch.Generator().manual_seed(0))
        needed = (warmup + batches) * batch_size
        if needed > len(dataset):
            raise ValueError(f"{warmup + batches} batches of {batch_size} need {needed} images; "
                             f"the train split of {root} has {len(dataset)}")
        rate, seconds, count = images_per_second(per_sample, batches, warmup, torch.device("cpu"))
        rows: list[dict[str, Any]] = [{
            "loader": f"per-sample DataLoader (PIL + train_transform, {workers} workers)",
            "device": "cpu", "images_per_s": rate, "seconds": seconds, "images": count, "ratio": 1.0, "data": data,
        }]
        baseline = rate

        started = time.perf_counter()
        built = cache_state(root, "train", image_size, cache_dir) != "current"
        build_cache(root, "train", image_size=image_size, cache_dir=cache_dir)
        build_s = time.perf_counter() - started if built else 0.0
        threads = torch.get_num_threads()
        # The cache loader as it comes (torch's threads), and on the CPU also with one thread.
        variants: list[tuple[str, bool, int | None]] = [(device, True, None) for device in devices]
        if threads > 1 and "cpu" in devices:
            variants.insert(1, ("cpu", True, 1))
        variants += [(device, False, None) for device in devices]
        for device, train, num_threads in variants:
            loader = cached_loader(root, "train", batch_size, train=train, device=device, image_size=image_size,
                                   cache_dir=cache_dir, build=False, drop_last=True, num_threads=num_threads)
            rate, seconds, count = images_per_second(loader, batches, warmup, torch.device(device))
            name = "CachedLoader, " + ("train augmentation" if train else "no augmentation (val)")
            used = num_threads or threads
            if device == "cpu":
                name += f", {used} thread" + ("s" if used > 1 else "")
            rows.append({
                "loader": name, "device": device, "images_per_s": rate, "seconds": seconds, "images": count,
                "ratio": rate / baseline, "data": data, "threads": used if device == "cpu" else None,
            })
        rows[1]["cache_build_s"] = build_s
    return rows
