"""`miniplaces download | verify | synth`: get, check or make a dataset in the MiniPlaces layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from miniplaces.cli.command import (
    add_command,
    non_negative_int,
    positive_float,
    positive_int,
    stored_image_size,
)
from miniplaces.errors import MiniPlacesError


def _sha256(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise argparse.ArgumentTypeError(f"must be 64 hexadecimal digits, got {text!r}")
    return value


def print_report(report: Any) -> int:
    """Print a `VerifyReport`: summary, notes, every problem; 0 when sound, else 1."""
    for line in report.summary():
        print(line)
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print("OK: the dataset is sound")
        return 0
    print(f"FAILED: {len(report.problems)} problem(s):")
    for problem in report.problems:
        print(f"  {problem}")
    return 1


def cmd_verify(args: argparse.Namespace) -> int:
    from miniplaces.data.verify import verify_dataset

    report = verify_dataset(args.root, decode=not args.no_decode, workers=args.workers)
    code = print_report(report)
    if not Path(args.root).exists():
        print(f"  run `miniplaces download --root {args.root}` or `miniplaces synth --root {args.root}`")
    return code


def cmd_synth(args: argparse.Namespace) -> int:
    from miniplaces.data.synth import synthesize

    root = Path(args.root)
    if root.exists() and not root.is_dir():
        raise MiniPlacesError(f"{root} is a file, not a folder; choose another --root")
    if root.exists() and any(root.iterdir()) and not args.force:
        raise MiniPlacesError(f"{root} is not empty; choose another --root or pass --force to write over it")
    synthesize(
        root,
        classes=args.classes,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        test_count=args.test,
        image_size=args.image_size,
        seed=args.seed,
    )
    print(
        f"wrote {root}: {args.classes} classes, {args.classes * args.per_class:,} train, "
        f"{args.classes * args.val_per_class:,} val, {args.test:,} test images of "
        f"{args.image_size}×{args.image_size} (seed {args.seed})"
    )
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from miniplaces.data.download import download_dataset

    bars: dict[str, tqdm] = {}
    quiet = args.quiet or not sys.stderr.isatty()

    def progress(name: str, done: int, total: int | None) -> None:
        if quiet:
            return
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(total=total, initial=done, desc=name, unit="B", unit_scale=True, leave=True)
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()

    def log(message: str) -> None:
        print(message, file=sys.stderr if quiet else sys.stdout)

    try:
        result = download_dataset(
            args.root,
            url=args.url,
            progress=progress,
            log=log,
            timeout=args.timeout,
            keep_archive=args.keep_archive,
            verify=not args.no_verify,
            workers=args.workers,
            sha256=args.sha256,
        )
    finally:
        for bar in bars.values():
            bar.close()
    if result.report is None:
        print(f"extracted into {result.root}; not verified (--no-verify)")
        return 0
    return print_report(result.report)



def register(subparsers: argparse._SubParsersAction) -> None:
    download = add_command(subparsers, "download", cmd_download)
    download.add_argument("--root", required=True, help="dataset folder to fill")
    download.add_argument(
        "--url",
        help="mirror of data.tar.gz; the label files are then taken from the archive if it holds them, "
        "else from the same base URL as the archive, else from the development kit on GitHub",
    )
    download.add_argument(
        "--sha256", type=_sha256, metavar="HEX",
        help="expected SHA-256 of data.tar.gz (from a source you trust); checked before anything is extracted",
    )
    download.add_argument("--timeout", type=positive_float, default=10.0,
                          help="connect/read timeout in seconds (default 10)")
    download.add_argument("--keep-archive", action="store_true", help="keep data.tar.gz after extraction")
    download.add_argument("--no-verify", action="store_true", help="skip the verification after extraction")
    download.add_argument("--workers", type=positive_int, default=2, help="decoding threads for verify (default 2)")
    download.add_argument("--quiet", action="store_true", help="no progress bars")

    verify = add_command(subparsers, "verify", cmd_verify)
    verify.add_argument("--root", required=True, help="dataset folder")
    verify.add_argument("--no-decode", action="store_true", help="only check that the files exist (fast)")
    verify.add_argument("--workers", type=positive_int, default=2, help="decoding threads (default 2)")

    synth = add_command(subparsers, "synth", cmd_synth)
    synth.add_argument("--root", required=True, help="folder to write (must be empty or absent unless --force)")
    synth.add_argument("--classes", type=positive_int, default=10, help="number of classes (default 10)")
    synth.add_argument("--per-class", type=positive_int, default=50, help="train images per class (default 50)")
    synth.add_argument("--val-per-class", type=non_negative_int, default=10, help="val images per class (default 10)")
    synth.add_argument("--test", type=non_negative_int, default=0, help="unlabelled test images (default 0)")
    synth.add_argument("--image-size", type=stored_image_size, default=128, help="image side in pixels (default 128)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--force", action="store_true", help="write into a non-empty folder")
