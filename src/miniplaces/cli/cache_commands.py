"""`miniplaces cache`: decode a split once into a memory-mapped uint8 array for the batched loader."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from miniplaces.cli.command import add_command, positive_int, stored_image_size
from miniplaces.errors import MiniPlacesError

SPLIT_CHOICES = ("train", "val", "test", "all")
DEFAULT_IMAGE_SIZE = 128


def cache_command(build: Any) -> str:
    """The `miniplaces cache` command line of a `CacheBuild` (the library's description of the fix)."""
    command = f"miniplaces cache --root {build.root} --split {build.split}"
    if build.image_size != DEFAULT_IMAGE_SIZE:
        command += f" --image-size {build.image_size}"
    if build.cache_dir is not None:
        command += f" --cache-dir {build.cache_dir}"
    return command + (" --force" if build.force else "")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "cache", run_cache)
    parser.add_argument("--root", type=Path, required=True, help="dataset folder (official MiniPlaces layout)")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default="train",
                        help="split to cache; 'all' caches train, val and test (those present)")
    parser.add_argument("--image-size", type=stored_image_size, default=DEFAULT_IMAGE_SIZE,
                        help="side S of the cached images, at most 1024; others are resized and "
                        "centre-cropped (default 128)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where to write the cache (default: see above)")
    parser.add_argument("--workers", type=positive_int, default=2, help="decoding processes (default 2)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--force", "--rebuild", action="store_true",
                        help="rebuild even when the cache is up to date")
    action.add_argument("--verify", action="store_true",
                        help="check a built cache fully: hash of the whole file, and every image decoded again "
                        "and compared with its cached pixels (catches images edited in place); exit 1 on a problem")
    parser.set_defaults(func=run_cache)


def _splits(root: Path, split: str) -> list[str]:
    if split != "all":
        return [split]
    present = [s for s in ("train", "val") if (root / f"{s}.txt").is_file()]
    if (root / "images" / "test").is_dir():
        present.append("test")
    return present or ["train"]  # lets the library say what is missing


def _command(args: argparse.Namespace, split: str) -> str:
    return cache_command(argparse.Namespace(root=args.root, split=split, image_size=args.image_size,
                                            cache_dir=args.cache_dir, force=False))


def run_cache(args: argparse.Namespace) -> int:
    if args.verify:
        return run_verify(args)
    from miniplaces.data.cache import build_cache, cache_paths, cache_state, disk_size_text, open_cache
    from miniplaces.data.layout import read_split
    from miniplaces.progress import start_progress

    for split in _splits(args.root, args.split):
        state = "stale" if args.force else cache_state(args.root, split, args.image_size, args.cache_dir)
        started = time.perf_counter()
        if state == "current":
            folder = build_cache(args.root, split, args.image_size, args.cache_dir, workers=args.workers)
            verb = "reused"
        else:
            if state == "corrupt":
                print(f"{split}: the cache is corrupt; rebuilding it", file=sys.stderr)
            total = len(read_split(args.root, split))
            with start_progress(f"cache {split}", total) as advance:
                folder = build_cache(args.root, split, args.image_size, args.cache_dir, workers=args.workers,
                                     progress=advance, force=True)
            verb = "built"
        cache = open_cache(args.root, split, args.image_size, args.cache_dir)
        images = cache_paths(args.root, split, args.image_size, args.cache_dir).images
        took = f" in {time.perf_counter() - started:.1f} s" if verb == "built" else ""
        print(f"{split}: {verb} {len(cache)} images of {args.image_size}×{args.image_size}{took} → "
              f"{folder}/{images.name} ({disk_size_text(images.stat().st_size)} on disk)")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """`--verify`: every problem of every split's cache; 0 when all are sound, else 1."""
    from miniplaces.data.cache import CacheError, verify_cache
    from miniplaces.data.layout import read_split
    from miniplaces.progress import start_progress

    failed = 0
    for split in _splits(args.root, args.split):
        total = len(read_split(args.root, split))
        try:
            with start_progress(f"verify {split}", total) as advance:
                problems = verify_cache(args.root, split, args.image_size, args.cache_dir, workers=args.workers,
                                        progress=advance)
        except CacheError as err:
            raise MiniPlacesError(f"{err.problem}; build it with `{_command(args, split)}`") from err
        if not problems:
            print(f"{split}: OK, {total} cached images match the dataset")
            continue
        failed += 1
        print(f"{split}: FAILED, {len(problems)} problem(s):")
        for problem in problems:
            print(f"  {problem}")
        print(f"  rebuild it with `{_command(args, split)} --force`")
    return 1 if failed else 0
