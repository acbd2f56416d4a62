"""UnfoldConv2d (cache, recompute) against nn.Conv2d on SimpleNet's layer shapes: time and saved memory.

Usage: PYTHONPATH=src python benchmarks/conv.py [--batch-size 64] [--image-size 128] [--repeats 7] [--device cpu]
Prints one line per layer, the total over the layers and the whole SimpleNet, with ratios to native
measured in the same run (interleaved, medians).
"""

from __future__ import annotations

import argparse

import torch

from miniplaces.bench.conv import run_conv_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-simplenet", action="store_true", help="skip the whole-model row")
    args = parser.parse_args()
    rows = run_conv_benchmark(batch_size=args.batch_size, image_size=args.image_size, repeats=args.repeats,
                              device=args.device, include_simplenet=not args.no_simplenet)
    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.image_size}×{args.image_size}, median of {args.repeats}, forward+backward")
    header = (f"{'layer':<12} {'shape':<44} {'native ms':>10} {'cache':>7} {'recomp':>7} "
              f"{'native MB':>10} {'cache':>7} {'recomp':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['layer']:<12} {r['shape']:<44} {r['native_ms']:>10.1f} {r['cache_time_ratio']:>6.2f}× "
              f"{r['recompute_time_ratio']:>6.2f}× {r['native_saved_mb']:>10.1f} {r['cache_memory_ratio']:>6.2f}× "
              f"{r['recompute_memory_ratio']:>6.2f}×")


if __name__ == "__main__":
    main()
