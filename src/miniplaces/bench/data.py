"""Data loading throughput: the per-sample DataLoader (PIL decode + the training transform) against the
batched `CachedLoader` over the decoded cache, on the same split in the same run.

The per-sample baseline is what training with `loader: dataloader` runs: `train_transform(S, resize_for(S))`,
which resizes to 144 for a 128-pixel crop and keeps that ratio at other sizes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torchvision.transforms import v2

from miniplaces.bench.result import BenchResult
from miniplaces.bench.timing import timed
from miniplaces.data.transforms import resize_for, train_transform
from miniplaces.errors import MiniPlacesError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def find_real_root() -> Path | None:
    """`shared/miniplaces` in the nearest folder above the working directory or, when the package runs from a
    source checkout, above the checkout (`../shared/miniplaces` for a clone beside it)."""
    starts = [Path.cwd().resolve()]
    checkout = Path(__file__).resolve().parents[3]  # src/miniplaces/bench/data.py → the checkout
    if (checkout / "pyproject.toml").is_file():  # not an installed wheel's site-packages
        starts.append(checkout)
    for start in starts:
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "miniplaces"
            if (candidate / "train.txt").is_file():
                return candidate
    return None


def per_sample_transform(image_size: int) -> v2.Compose:
    """The transform of the per-sample baseline: training's, resize `resize_for(image_size)` then crop."""
    return train_transform(image_size, resize_for(image_size))


def images_per_second(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], count: int, warmup: int,
                      device: torch.device) -> tuple[float, float, int]:
    """Time `count` batches after `warmup` untimed ones; returns (images/s, seconds, images)."""
    iterator: Iterator[tuple[torch.Tensor, torch.Tensor]] = iter(batches)
    for _ in range(warmup):
        next(iterator)
    images = 0

    def consume() -> None:
        nonlocal images
        for _ in range(count):
            x, _ = next(iterator)
            images += x.shape[0]

    seconds = timed(consume, device)
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
    *,
    synthetic: bool = False,
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
        synthetic: without `root`, use a synthetic set even when the real one is found.

    Returns one row per loader: `loader`, `device`, `images_per_s`, `seconds`, `images`,
    `ratio` (to the per-sample loader), `data`, on the cache rows `threads` and `augmented` (training
    batches, or unaugmented ones as validation makes), plus `cache_build_s` on the first cache row
    (0 when an up-to-date cache was reused).

    Raises:
        MiniPlacesError: the train split has fewer images than the batches need.
    """
    from torch.utils.data import DataLoader

    from miniplaces.data.cache import build_cache, cache_state
    from miniplaces.data.dataset import MiniPlaces
    from miniplaces.data.loader import cached_loader
    from miniplaces.data.synth import synthesize

    devices = list(devices) if devices is not None else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory(prefix="miniplaces-bench-") as tmp:
        if root is None and not synthetic:
            root = find_real_root()
        if root is None:
            per_class = -(-(warmup + batches) * batch_size // 10)
            root = synthesize(Path(tmp) / "synth", classes=10, per_class=per_class, val_per_class=1,
                              image_size=image_size)
            data = f"synthetic (10 classes × {per_class}, {image_size}×{image_size})"
        else:
            data = str(root)
        root = Path(root)

        dataset = MiniPlaces(root, "train", transform=per_sample_transform(image_size))
        needed = (warmup + batches) * batch_size
        if needed > len(dataset):
            raise MiniPlacesError(f"{warmup + batches} batches of {batch_size} need {needed} images; "
                                  f"the train split of {root} has {len(dataset)}: time fewer or smaller batches")
        per_sample = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                                generator=torch.Generator().manual_seed(0))
        rate, seconds, count = images_per_second(per_sample, batches, warmup, torch.device("cpu"))
        rows: list[dict[str, Any]] = [{
            "loader": f"per-sample DataLoader (PIL, resize {resize_for(image_size)} + train augmentation, "
                      f"{workers} workers)",
            "device": "cpu", "images_per_s": rate, "seconds": seconds, "images": count, "ratio": 1.0, "data": data,
        }]
        baseline = rate

        built = cache_state(root, "train", image_size, cache_dir) != "current"
        build_s = timed(lambda: build_cache(root, "train", image_size=image_size, cache_dir=cache_dir), "cpu")
        build_s = build_s if built else 0.0
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
                "augmented": train,
            })
        rows[1]["cache_build_s"] = build_s
    return rows


def run(*, device: torch.device, root: Path | None = None, synthetic: bool = False, batches: int = 20,
        batch_size: int = 256, warmup: int = 2, workers: int = 2, image_size: int = 128,
        cache_dir: Path | None = None) -> BenchResult:
    """`run_data_benchmark` as a `BenchResult`; the cache loader runs on the CPU and, when `device` is
    an accelerator, on it too."""
    devices = ["cpu"] + ([str(device)] if device.type != "cpu" else [])
    rows = run_data_benchmark(root, batches=batches, batch_size=batch_size, warmup=warmup, workers=workers,
                              image_size=image_size, devices=devices, cache_dir=cache_dir, synthetic=synthetic)
    settings: dict[str, Any] = {"device": device, "data": rows[0]["data"], "batches": batches,
                                "batch_size": batch_size, "warmup": warmup, "workers": workers,
                                "image_size": image_size, "per_sample_resize": resize_for(image_size)}
    if cache_dir is not None:
        settings["cache_dir"] = cache_dir
    return BenchResult("data", settings, "the per-sample DataLoader (first row), same split, same run", rows)


def table(result: BenchResult) -> str:
    """Markdown: images/s of each loader and its ratio to the per-sample DataLoader (the first row)."""
    lines = ["| Loader | Device | Images/s | × per-sample | Images timed | Seconds |", "|---|---|---:|---:|---:|---:|"]
    for r in result.rows:
        lines.append(f"| {r['loader']} | {r['device']} | {r['images_per_s']:.0f} | {r['ratio']:.2f} | "
                     f"{r['images']} | {r['seconds']:.2f} |")
    build = result.rows[1].get("cache_build_s") if len(result.rows) > 1 else None
    if build:
        lines.append(f"\n(the train cache was built first, in {build:.1f} s; later runs reuse it)")
    return "\n".join(lines) + "\n"


def figure(result: BenchResult) -> Figure:
    """Images per second of each loader, horizontal bars labelled with the ratio to the per-sample loader."""
    from matplotlib.figure import Figure

    rows: Sequence[dict[str, Any]] = result.rows
    drawing = Figure(figsize=(9, 0.6 * len(rows) + 1.6))
    axes = drawing.add_subplot(1, 1, 1)
    labels = [f"{r['loader']} [{r['device']}]" for r in rows]
    ys = list(range(len(rows)))[::-1]
    bars = axes.barh(ys, [r["images_per_s"] for r in rows], color=[f"C{i}" for i in range(len(rows))])
    axes.bar_label(bars, labels=[f"{r['images_per_s']:.0f}/s ({r['ratio']:.1f}×)" for r in rows], fontsize=8,
                   padding=3)
    axes.set_yticks(ys, labels, fontsize=8)
    axes.set_xlabel("images per second")
    axes.set_xlim(0, max(r["images_per_s"] for r in rows) * 1.25)
    axes.set_title(f"Data throughput on {rows[0].get('data', '')}\n{result.machine.describe()}", fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    drawing.tight_layout()
    return drawing
