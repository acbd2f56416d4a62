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

A cache is also checked against what its metadata claims each time it is opened: shapes,
dtypes, labels (equal to the label file, in range) and a hash of a fixed sample of rows
recorded at build time (sampled, so opening 5 GB stays fast). A cache that fails is
"corrupt": `build_cache` rebuilds it and `open_cache` refuses it. `verify_cache` goes
further: the hash of the whole file, and every image decoded again and compared with its
row, which catches an image edited in place with the same size and modification time.

The images file is preallocated before anything is decoded into it, so a full disk fails
at once with a clear error instead of a SIGBUS halfway through the memory-mapped writes.

Images of S×S pixels are stored exactly as decoded; others are resized (shorter side to
S, bilinear with antialiasing) and centre-cropped to S×S.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
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
from miniplaces.data.layout import SPLITS, Sample, images_dir, labels_path, read_categories, read_split
from miniplaces.errors import MiniPlacesError
from miniplaces.fileio import atomic_write, atomic_write_json

FORMAT_VERSION = 2
DEFAULT_IMAGE_SIZE = 128
# 1024² × 3 bytes is 3 MiB per image, already 300 GiB for the full train split; beyond it a typo
# (100000) would map a terabyte-sized file.
MAX_IMAGE_SIZE = 1024
CHUNK = 256  # images per decoding task: big enough to amortise the task, small enough to balance 2 workers
SAMPLED_ROWS = 64  # rows hashed at build and checked at every open (plus the first and the last)
HASH_BLOCK = 1 << 23

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
    """The decoded cache is missing, stale, corrupt or cannot be written.

    `build` is the `build_cache` call that fixes it, when one does (the CLI turns it into a command);
    `problem` is the message without the library's advice, so that the command line can give its own.
    """

    def __init__(self, message: str, build: CacheBuild | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.build = build
        self.problem = problem or message


def check_image_size(image_size: int) -> int:
    """`image_size` when it is a whole number of pixels in 1..MAX_IMAGE_SIZE, else `CacheError`."""
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer) \
            or not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise CacheError(f"image size must be a whole number of pixels from 1 to {MAX_IMAGE_SIZE}, "
                         f"got {image_size!r}")
    return int(image_size)


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
    image_size = check_image_size(image_size)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
    stem = f"{split}-{image_size}"
    return CachePaths(folder / f"{stem}.images.npy", folder / f"{stem}.labels.npy", folder / f"{stem}.json")


def disk_size_text(size_bytes: int) -> str:
    """`1.9 GB`, `312 MB`: a size as people read it on a disk (decimal units, as `df -H`)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}" if size_bytes < 10 * scale else f"{size_bytes / scale:.0f} {unit}"
    return f"{size_bytes} B"


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


def _compare_chunk(images_file: str, base: str, start: int, relpaths: list[str], image_size: int) -> list[int]:
    """Rows among `start…` whose image no longer decodes to the cached pixels; runs in a worker process."""
    cached = np.load(images_file, mmap_mode="r")
    return [start + offset for offset, relpath in enumerate(relpaths)
            if not np.array_equal(cached[start + offset], decode_square(os.path.join(base, relpath), image_size))]


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def sampled_rows(count: int, rows: int | None = None) -> np.ndarray:
    """The rows whose pixels the sampled hash covers: a fixed-seed sample (`SAMPLED_ROWS` by default)
    plus the first and last."""
    rows = SAMPLED_ROWS if rows is None else rows
    if count <= rows + 2:
        return np.arange(count)
    picked = np.random.default_rng(0).choice(count, size=rows, replace=False)
    return np.unique(np.concatenate([picked, [0, count - 1]]))


def sampled_hash(images: np.ndarray, labels: np.ndarray, rows: int | None = None) -> str:
    """SHA-256 over the shape, the sampled rows (index and pixels) and every label."""
    digest = hashlib.sha256(repr((tuple(images.shape), str(images.dtype))).encode())
    for row in sampled_rows(len(images), rows):
        digest.update(int(row).to_bytes(8, "little"))
        digest.update(np.ascontiguousarray(images[row]).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a whole file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _rebuild_hint(split: str, image_size: int) -> str:
    # Library code names the function, not command-line flags; the cache command adds its own.
    return f"rebuild it with build_cache(root, {split!r}, image_size={image_size}, force=True)"


def _integrity_problem(paths: CachePaths, meta: dict[str, Any], samples: list[Sample],
                       num_classes: int | None) -> str | None:
    """What is wrong with the cache files against their metadata and the label file, or None."""
    count, size, rows = meta["count"], meta["image_size"], meta.get("sampled_rows")
    valid_rows = isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0
    if not valid_rows or not isinstance(meta.get("sample_sha256"), str):
        return f"{paths.meta} lacks a valid sampled hash"
    try:
        images = np.load(paths.images, mmap_mode="r")
        labels = np.load(paths.labels)
    except (OSError, ValueError, EOFError) as err:
        return f"cannot map {paths.images.name} / {paths.labels.name} ({err}); truncated or overwritten"
    if images.shape != (count, size, size, 3) or images.dtype != np.uint8:
        return (f"{paths.images} holds {images.dtype} {images.shape}, "
                f"expected uint8 ({count}, {size}, {size}, 3)")
    if labels.shape != (count,) or labels.dtype != np.int64:
        return f"{paths.labels} holds {labels.dtype} {labels.shape}, expected int64 ({count},)"
    low, high = (int(labels.min()), int(labels.max())) if count else (0, 0)
    if samples and samples[0].label is None:
        if count and (low, high) != (UNLABELLED, UNLABELLED):
            return f"{paths.labels} holds labels {low}..{high} for the unlabelled test split"
    elif count and (low < 0 or (num_classes is not None and high >= num_classes)):
        return f"{paths.labels} holds labels {low}..{high}, outside 0..{(num_classes or 1) - 1}"
    expected = np.array([UNLABELLED if s.label is None else s.label for s in samples], dtype=np.int64)
    if not np.array_equal(labels, expected):
        where = int(np.flatnonzero(labels != expected)[0])
        return f"{paths.labels} row {where} holds label {labels[where]}, the label file says {expected[where]}"
    if sampled_hash(images, labels, rows) != meta["sample_sha256"]:
        return f"{paths.images}: the sampled pixels differ from those written at build time"
    return None


@dataclass(frozen=True)
class _Inspection:
    state: str  # "current", "stale", "missing" or "corrupt"
    problem: str | None
    meta: dict[str, Any] | None
    samples: list[Sample] | None


def _inspect(root: Path | str, split: str, image_size: int, cache_dir: Path | str | None) -> _Inspection:
    paths = cache_paths(root, split, image_size, cache_dir)
    meta = _read_meta(paths.meta)
    if meta is None or not paths.images.is_file() or not paths.labels.is_file():
        return _Inspection("missing", None, meta, None)
    samples = read_split(root, split)
    expected = {
        "format_version": FORMAT_VERSION,
        "split": split,
        "image_size": image_size,
        "count": len(samples),
        "fingerprint": fingerprint(root, split, [s.relpath for s in samples]),
    }
    if not all(meta.get(k) == v for k, v in expected.items()):
        return _Inspection("stale", None, meta, samples)
    num_classes = len(read_categories(root)) if split != "test" else None
    problem = _integrity_problem(paths, meta, samples, num_classes)
    return _Inspection("corrupt" if problem else "current", problem, meta, samples)


def cache_state(root: Path | str, split: str, image_size: int = DEFAULT_IMAGE_SIZE,
                cache_dir: Path | str | None = None) -> str:
    """`"current"`, `"stale"` (built from other files or settings), `"corrupt"` (its files do not
    match what its metadata claims: truncated, overwritten) or `"missing"`."""
    return _inspect(root, split, image_size, cache_dir).state


def _mp_context() -> multiprocessing.context.BaseContext:
    # Workers only touch PIL and numpy, so fork is safe and skips re-importing torch per worker.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _free_space_error(folder: Path, split: str, needed: int) -> CacheError:
    try:
        free = f"{shutil.disk_usage(folder).free / 2**30:.2f} GiB are free"
    except OSError:
        free = "the free space is unknown"
    return CacheError(
        f"not enough disk space in {folder} for the {split} cache: it needs {needed / 2**30:.2f} GiB, {free}; "
        f"free some space or put the cache in another folder"
    )


def _preallocate(path: Path, size: int, split: str) -> None:
    """Reserve the blocks of the (sparse) images file now, so writes into its memory map cannot fail.

    A memory-mapped write into a sparse file on a full disk kills the process with SIGBUS,
    halfway through and with no chance to clean up. Where `posix_fallocate` is unsupported
    (other systems, some file systems) the free space is compared with the size instead.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        fd = os.open(path, os.O_RDWR)
        try:
            fallocate(fd, 0, size)
            return
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise _free_space_error(path.parent, split, size) from err
            if err.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
                raise
        finally:
            os.close(fd)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if free < size - path.stat().st_blocks * 512:
        raise _free_space_error(path.parent, split, size)


_TMP_PID = re.compile(r"\.(\d+)-[0-9a-f]+\.tmp$|\.tmp-(\d+)-[0-9a-f]+$")


def _remove_stale_tmp(folder: Path, stem: str) -> None:
    """Delete the temporary files of builds of `stem` whose process is gone (killed, e.g. by SIGBUS)."""
    if not folder.is_dir():
        return
    for leftover in folder.glob(f"*{stem}.*"):
        match = _TMP_PID.search(leftover.name)
        if match is None:
            continue
        pid = int(match.group(1) or match.group(2))
        try:
            os.kill(pid, 0)
            continue  # a build in progress
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # another user's live process
        leftover.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted build", leftover)


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
        image_size: side S of the stored images, 1..MAX_IMAGE_SIZE.
        cache_dir: where to write; default `<root>/cache`, or a per-root folder under
            `~/.cache/miniplaces` when the dataset folder is read-only.
        workers: decoding processes (≤ 1 decodes in this process).
        progress: called with the number of images decoded since the last call (e.g. `tqdm.update`).
        force: rebuild even when the cache is current.

    A stale or corrupt cache is rebuilt. The images are decoded into a preallocated temporary
    file renamed into place once every image decoded, the metadata last: a failed or
    interrupted build leaves the old cache or none, and no temporary file.
    """
    if split not in SPLITS:
        raise CacheError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    image_size = check_image_size(image_size)
    root = Path(root)
    paths = cache_paths(root, split, image_size, cache_dir)
    if not force:
        inspection = _inspect(root, split, image_size, cache_dir)
        if inspection.state == "current":
            log.info("reusing the %s cache of %d px images (%s on disk) at %s", split, image_size,
                     disk_size_text(paths.images.stat().st_size), paths.images.parent)
            return paths.images.parent
        if inspection.state == "corrupt":
            log.warning("rebuilding the corrupt %s cache at %s: %s", split, paths.images.parent, inspection.problem)

    samples = read_split(root, split)
    relpaths = [s.relpath for s in samples]
    started = time.perf_counter()
    folder = paths.images.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheError(f"cannot create the cache folder {folder} ({err}); choose a writable cache folder "
                         "(argument cache_dir)") from err
    _remove_stale_tmp(folder, f"{split}-{image_size}")

    tmp_images = folder / f".{paths.images.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    shape = (len(samples), image_size, image_size, 3)
    # Said before the work starts: a 128 px cache of the full train split takes about 5 GB.
    log.info("building the %s cache: %d images at %d px, %s on disk, in %s", split, len(samples), image_size,
             disk_size_text(math.prod(shape)), folder)
    try:
        images = open_memmap(tmp_images, mode="w+", dtype=np.uint8, shape=shape)
        del images  # workers write through their own maps of the file
        _preallocate(tmp_images, tmp_images.stat().st_size, split)
        labels = np.array([UNLABELLED if s.label is None else s.label for s in samples], dtype=np.int64)
        _decode_all(str(tmp_images), str(images_dir(root)), relpaths, image_size, workers, progress)
        with open(tmp_images, "rb+") as handle:
            os.fsync(handle.fileno())
        mapped = np.load(tmp_images, mmap_mode="r")
        meta = {
            "format_version": FORMAT_VERSION,
            "root": str(root.resolve()),
            "split": split,
            "count": len(samples),
            "image_size": image_size,
            "shape": list(shape),
            "dtype": "uint8",
            "labels_dtype": "int64",
            "num_labelled": int((labels >= 0).sum()),
            "fingerprint": fingerprint(root, split, relpaths),
            "sampled_rows": SAMPLED_ROWS,
            "sample_sha256": sampled_hash(mapped, labels, SAMPLED_ROWS),
            "images_sha256": file_sha256(tmp_images),
            "images_file": paths.images.name,
            "labels_file": paths.labels.name,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        del mapped
        # The metadata goes first and comes back last: in between, the cache reads as missing.
        paths.meta.unlink(missing_ok=True)
        os.replace(tmp_images, paths.images)
        atomic_write(paths.labels, lambda handle: np.save(handle, labels))
        atomic_write_json(paths.meta, meta, indent=2)
    except OSError as err:
        raise CacheError(f"cannot write the {split} cache in {folder} ({err}); "
                         f"free some space or choose another cache folder") from err
    finally:
        tmp_images.unlink(missing_ok=True)
    log.info("built the %s cache (%d px, %s) at %s in %.1f s", split, image_size,
             disk_size_text(paths.images.stat().st_size), folder, time.perf_counter() - started)
    return folder


def _map_chunks(task: Callable[[str, str, int, list[str], int], Any], images_file: str, base: str,
                relpaths: list[str], image_size: int, workers: int,
                progress: Callable[[int], None] | None) -> list[Any]:
    """Run `task(images_file, base, start, chunk, image_size)` over chunks of `relpaths`, in processes."""
    # Small splits get small chunks so that every worker has some.
    size = max(1, min(CHUNK, -(-len(relpaths) // (4 * max(1, workers)))))
    chunks = [(start, relpaths[start:start + size]) for start in range(0, len(relpaths), size)]
    results: list[Any] = []
    if workers <= 1 or len(chunks) <= 1:
        for start, chunk in chunks:
            results.append(task(images_file, base, start, chunk, image_size))
            if progress is not None:
                progress(len(chunk))
        return results
    with ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context()) as pool:
        futures = {pool.submit(task, images_file, base, start, chunk, image_size): len(chunk)
                   for start, chunk in chunks}
        try:
            for future in as_completed(futures):
                results.append(future.result())
                if progress is not None:
                    progress(futures[future])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def _decode_all(images_file: str, base: str, relpaths: list[str], image_size: int, workers: int,
                progress: Callable[[int], None] | None) -> None:
    _map_chunks(_decode_chunk, images_file, base, relpaths, image_size, workers, progress)


def open_cache(root: Path | str, split: str, image_size: int = DEFAULT_IMAGE_SIZE,
               cache_dir: Path | str | None = None) -> CacheArrays:
    """Map a current cache of `split` (images stay on disk, paged in on use).

    Raises `CacheError` saying how to build or rebuild it when it is missing, stale or corrupt.
    """
    paths = cache_paths(root, split, image_size, cache_dir)
    inspection = _inspect(root, split, image_size, cache_dir)
    where = f"the {split} split of {root} at {paths.images.parent} (image size {image_size})"
    if inspection.state == "corrupt":
        problem = f"the decoded cache of {where} is corrupt: {inspection.problem}"
        raise CacheError(f"{problem}; {_rebuild_hint(split, image_size)}",
                         CacheBuild(root, split, image_size, cache_dir, force=True), problem)
    if inspection.state != "current":
        why = "is missing" if inspection.state == "missing" else "is out of date"
        raise CacheError(f"the decoded cache of {where} {why}; "
                         f"build it with build_cache(root, {split!r}, image_size={image_size})",
                         CacheBuild(root, split, image_size, cache_dir), f"the decoded cache of {where} {why}")
    assert inspection.meta is not None
    images = np.load(paths.images, mmap_mode="r")
    labels = np.load(paths.labels)
    return CacheArrays(images=images, labels=labels, meta=inspection.meta)


def verify_cache(root: Path | str, split: str, image_size: int = DEFAULT_IMAGE_SIZE,
                 cache_dir: Path | str | None = None, workers: int = 2,
                 progress: Callable[[int], None] | None = None) -> list[str]:
    """A full check of a built cache: every problem found, each naming a file (empty when sound).

    Beyond what `open_cache` checks, it hashes the whole images file against the hash
    recorded at build time, and decodes every image again and compares it with its row:
    an image edited in place with the same size and modification time (which the
    fingerprint cannot see) is named here. `progress` is called with images compared.
    """
    paths = cache_paths(root, split, image_size, cache_dir)
    inspection = _inspect(root, split, image_size, cache_dir)
    if inspection.state in ("missing", "stale"):
        why = "no decoded cache" if inspection.state == "missing" else "only an out-of-date cache"
        problem = (f"{why} of the {split} split of {root} at {paths.images.parent} "
                   f"(image size {image_size}) to verify")
        raise CacheError(f"{problem}; build it with build_cache(root, {split!r}, image_size={image_size})",
                         CacheBuild(root, split, image_size, cache_dir), problem)
    assert inspection.meta is not None and inspection.samples is not None
    problems = [inspection.problem] if inspection.problem else []
    if file_sha256(paths.images) != inspection.meta.get("images_sha256"):
        problems.append(f"{paths.images}: its contents differ from those written at build time")
    try:
        shape = np.load(paths.images, mmap_mode="r").shape
    except (OSError, ValueError, EOFError):
        return problems
    relpaths = [s.relpath for s in inspection.samples]
    if shape != (len(relpaths), image_size, image_size, 3):
        return problems
    base = images_dir(root)
    chunks = _map_chunks(_compare_chunk, str(paths.images), str(base), relpaths, image_size, workers, progress)
    for row in sorted(row for chunk in chunks for row in chunk):
        problems.append(f"{base / relpaths[row]}: decodes differently from row {row} of {paths.images.name} "
                        f"(edited after the cache was built?)")
    return problems
