"""Images/second of the per-sample DataLoader (PIL + the study's train transform, 2 workers) against the
batched CachedLoader over the decoded cache, on ../shared/miniplaces when present, else synthetic data.

Usage: PYTHONPATH=src python benchmarks/data_throughput.py [--root DIR] [--batches 20] [--batch-size 256]
Prints images/s of each loader and its ratio to the per-sample loader, measured in the same run
(warm-up batches excluded). The first run also builds the train cache (its time is printed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from miniplaces.bench.data import run_data_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="dataset folder (default: ../shared/miniplaces)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loader")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--workers", type=int, default=2, help="workers of the per-sample DataLoader")
    parser.add_argument("--device", action="append", help="cache loader device (repeatable; default cpu [+ cuda])")
    args = parser.parse_args()
    rows = run_data_benchmark(root=args.root, batches=args.batches, batch_size=args.batch_size, warmup=args.warmup,
                              workers=args.workers, devices=args.device)
    print(f"data: {rows[0]['data']}; batch {args.batch_size}, {args.batches} timed batches after {args.warmup} "
          f"warm-up; {torch.get_num_threads()} torch threads")
    if rows[1].get("cache_build_s"):
        print(f"(built the train cache first: {rows[1]['cache_build_s']:.1f} s)")
    header = f"{'loader':<58} {'device':<6} {'images/s':>10} {'ratio':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['loader']:<58} {r['device']:<6} {r['images_per_s']:>10.0f} {r['ratio']:>7.1f}×")


if __name__ == "__main__":
    main()
