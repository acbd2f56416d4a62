"""A decoded cache of one split: every image once as uint8 pixels in a memory-mapped `.npy`.

MiniPlaces images are small (128×128), so decoding JPEGs costs more than the training
step of a small model. `build_cache` decodes a split once into

```
<cache dir>/<split>-<S>.images.npy   uint8 (N, S, S, 3), memory-mapped when read
<cache dir>/<split>-<S>.labels.npy   int64 (N,), -1 for the unlabelled test split
<cache dir>/<split>-<S>.json         root, split, count, image size, fingerprint, format version
```

and `open_cache` maps it back without reading it into memory. The fingerprint covers
the label file and the image list (name, size and modification time of every image),
so a changed dataset makes the cache stale instead of silently wrong.

Images of S×S pixels are stored exactly as decoded; others are resized (shorter side to
S, bilinear with antialiasing) and centre-cropped to S×S.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import stat
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap
from PIL import Image

from miniplaces.data.dataset import UNLABELLED, load_rgb
from miniplaces.data.layout import SPLITS, images_dir, labels_path, read_split
from miniplaces.errors import MiniPlacesError

FORMAT_VERSION = 1
DEFAULT_IMAGE_SIZE = 128
CHUNK = 256  # images per decoding task: big enough to amortise the task, small enough to balance 2 workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheBuild:
    """The `build_cache` call that would fix a missing or stale cache (the CLI turns it into a command)."""

    root: Path | str
    split: str
    image_size: int
    cache_dir: Path | str | None = None
    force: bool = False


class CacheError(MiniPlacesError):
    """The decoded cache is missing, stale or unusable; `build` says how to make it when that fixes it."""

    def __init__(self, message: str, build: CacheBuild | None = None) -> None:
        super().__init__(message)
        self.build = build


@dataclass(frozen=True)
class CachePaths:
    """The three files of one cached split."""

    images: Path
    labels: Path
    meta: Path


@dataclass(frozen=True)
class CacheArrays:
    """An opened cache: `images` (N, S, S, 3) uint8 memory map, `labels` (N,) int64, `meta` dict."""

    images: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.labels)


def _is_writable_dir(path: Path) -> bool:
    # os.access alone says yes to root even for r-x folders; honour the mode bits too,
    # so a dataset folder made read-only on purpose (the shared data) stays untouched.
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and bool(mode & 0o222) and os.access(path, os.W_OK | os.X_OK)


def user_cache_dir(root: Path | str) -> Path:
    """The per-root fallback under `$XDG_CACHE_HOME/miniplaces` (default `~/.cache/miniplaces`)."""
    resolved = Path(root).resolve()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "miniplaces"
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return base / f"{resolved.name or 'root'}-{digest}"


def default_cache_dir(root: Path | str) -> Path:
    """`<root>/cache` when it is (or can be made) writable, else `user_cache_dir(root)`."""
    root = Path(root)
    inside = root / "cache"
    if _is_writable_dir(inside) or (not inside.exists() and _is_writable_dir(root)):
        return inside
    return user_cache_dir(root)


def cache_paths(root: Path | str, split: str, image_size: int = DEFAULT_IMAGE_SIZE,
                cache_dir: Path | str | None = None) -> CachePaths:
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
    stem = f"{split}-{image_size}"
    return CachePaths(folder / f"{stem}.images.npy", folder / f"{stem}.labels.npy", folder / f"{stem}.json")


def fingerprint(root: Path | str, split: str, relpaths: Sequence[str]) -> str:
    """SHA-256 over the label file's bytes and the name, size and mtime of every listed image."""
    digest = hashlib.sha256()
    if split != "test":
        digest.update(labels_path(root, split).read_bytes())
    base = str(images_dir(root))
    for relpath in relpaths:
        try:
            st = os.stat(os.path.join(base, relpath))
            digest.update(f"{relpath}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            digest.update(f"{relpath}\0missing\n".encode())
    return digest.hexdigest()


def decode_square(path: Path | str, image_size: int) -> np.ndarray:
    """Decode one image to (S, S, 3) uint8: exact when it is S×S, else resize shorter side + centre crop."""
    image = load_rgb(path)
    width, height = image.size
    if (width, height) != (image_size, image_size):
        scale = image_size / min(width, height)
        new_w, new_h = max(image_size, round(width * scale)), max(image_size, round(height * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)  # PIL antialiases when shrinking
        left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, dtype=np.uint8)


def _decode_chunk(images_file: str, base: str, start: int, relpaths: list[str], image_size: int) -> int:
    """Decode `relpaths` into rows `start…` of the (temporary) images file; runs in a worker process."""
    out = np.load(images_file, mmap_mode="r+")
    for offset, relpath in enumerate(relpaths):
        out[start + offset] = decode_square(os.path.join(base, relpath), image_size)
    out.flush()
    del out
    return len(relpaths)


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cache_state(root: Path | str, split: str, image_size: int = DEFAULT_IMAGE_SIZE,
                cache_dir: Path | str | None = None) -> str:
    """`"current"`, `"stale"` (built from other files or settings) or `"missing"`."""
    paths = cache_paths(root, split, image_size, cache_dir)
    meta = _read_meta(paths.meta)
    if meta is None or not paths.images.is_file() or not paths.labels.is_file():
        return "missing"
    samples = read_split(root, split)
    expected = {
        "format_version": FORMAT_VERSION,
        "split": split,
        "image_size": image_size,
        "count": len(samples),
        "fingerprint": fingerprint(root, split, [s.relpath for s in samples]),
    }
    return "current" if all(meta.get(k) == v for k, v in expected.items()) else "stale"


def _mp_context() -> multiprocessing.context.BaseContext:
    # Workers only touch PIL and numpy, so fork is safe and skips re-importing torch per worker.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def build_cache(
    root: Path | str,
    split: str,
    image_size: int = DEFAULT_IMAGE_SIZE,
    cache_dir: Path | str | None = None,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    force: bool = False,
) -> Path:
    """Decode `split` of `root` into the cache (or reuse it when current); returns the cache folder.

    Args:
        root: the dataset folder.
        split: `train`, `val` or `test`.
        image_size: side S of the stored images.
        cache_dir: where to write; default `<root>/cache`, or a per-root folder under
            `~/.cache/miniplaces` when the dataset folder is read-only.
        workers: decoding processes (≤ 1 decodes in this process).
        progress: called with the number of images decoded since the last call (e.g. `tqdm.update`).
        force: rebuild even when the cache is current.

    The files are written under temporary names and renamed into place only once every image
    decoded, the metadata last: a failed or interrupted build leaves the old cache or none.
    """
    if split not in SPLITS:
        raise CacheError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if image_size < 1:
        raise CacheError(f"image size must be positive, got {image_size}")
    root = Path(root)
    paths = cache_paths(root, split, image_size, cache_dir)
    if not force and cache_state(root, split, image_size, cache_dir) == "current":
        log.info("reusing the %s cache at %s", split, paths.images.parent)
        return paths.images.parent

    samples = read_split(root, split)
    relpaths = [s.relpath for s in samples]
    started = time.perf_counter()
    folder = paths.images.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheError(f"cannot create the cache folder {folder} ({err}); choose a writable cache folder "
                         "(argument cache_dir)") from err

    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = CachePaths(*(p.with_name(p.name + tag) for p in (paths.images, paths.labels, paths.meta)))
    try:
        images = open_memmap(tmp.images, mode="w+", dtype=np.uint8, shape=(len(samples), image_size, image_size, 3))
        del images  # workers write through their own maps of the file
        labels = np.array([UNLABELLED if s.label is None else s.label for s in samples], dtype=np.int64)
        with open(tmp.labels, "wb") as handle:
            np.save(handle, labels)
        _decode_all(str(tmp.images), str(images_dir(root)), relpaths, image_size, workers, progress)
        meta = {
            "format_version": FORMAT_VERSION,
            "root": str(root.resolve()),
            "split": split,
            "count": len(samples),
            "image_size": image_size,
            "num_labelled": int((labels >= 0).sum()),
            "fingerprint": fingerprint(root, split, relpaths),
            "images_file": paths.images.name,
            "labels_file": paths.labels.name,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        tmp.meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        # The metadata goes first and comes back last: in between, the cache reads as missing.
        paths.meta.unlink(missing_ok=True)
        os.replace(tmp.images, paths.images)
        os.replace(tmp.labels, paths.labels)
        os.replace(tmp.meta, paths.meta)
    except BaseException:
        for leftover in (tmp.images, tmp.labels, tmp.meta):
            leftover.unlink(missing_ok=True)
        raise
    log.info("built the %s cache at %s in %.1f s", split, folder, time.perf_counter() - started)
    return folder


def _decode_all(images_file: str, base: str, relpaths: list[str], image_size: int, workers: int,
                progress: Callable[[int], None] | None) -> None:
    # Small splits get small chunks so that every worker has some.
    size = max(1, min(CHUNK, -(-len(relpaths) // (4 * max(1, workers)))))
    chunks = [(start, relpaths[start:start + size]) for start in range(0, len(relpaths), size)]
    if workers <= 1 or len(chunks) == 1:
        for start, chunk in chunks:
            done = _decode_chunk(images_file, base, start, chunk, image_size)
            if progress is not None:
                progress(done)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) as pool:
        futures = [pool.submit(_decode_chunk, images_file, base, start, chunk, image_size) for start, chunk in chunks]
        try:
            for future in as_completed(futures):
                done = future.result()
                if progress is not None:
                    progress(done)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def open_cache(root: Path | str, split: str, image_size: int = DEFAULT_IMAGE_SIZE,
               cache_dir: Path | str | None = None) -> CacheArrays:
    """Map a current cache of `split` (images stay on disk, paged in on use).

    Raises `CacheError` (with the `CacheBuild` that fixes it) when it is missing or stale.
    """
    paths = cache_paths(root, split, image_size, cache_dir)
    state = cache_state(root, split, image_size, cache_dir)
    if state != "current":
        why = "no decoded cache" if state == "missing" else "the decoded cache is out of date"
        raise CacheError(
            f"{why} of the {split} split of {root} at {paths.images.parent} (image size {image_size}); "
            "build it first", CacheBuild(root, split, image_size, cache_dir),
        )
    meta = _read_meta(paths.meta) or {}
    images = np.load(paths.images, mmap_mode="r")
    labels = np.load(paths.labels)
    if images.shape != (meta["count"], image_size, image_size, 3) or labels.shape != (meta["count"],):
        raise CacheError(
            f"{paths.images} holds {images.shape}, expected ({meta['count']}, {image_size}, {image_size}, 3); "
            "rebuild it", CacheBuild(root, split, image_size, cache_dir, force=True),
        )
    return CacheArrays(images=images, labels=labels, meta=meta)
