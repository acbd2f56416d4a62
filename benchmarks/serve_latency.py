"""`miniplaces serve` on SimpleNet at 128×128: start-up, and one image's predict / saliency / attack over HTTP.

Usage: PYTHONPATH=src python benchmarks/serve_latency.py [--threads 2] [--repeats 5]
Ratios are to one forward+backward pass of the same model on one image, measured in the same run.
"""

from __future__ import annotations

import argparse

import torch

from miniplaces.bench.serve import measure_serve_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="simplenet")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    rows = measure_serve_latency(args.model, args.image_size, args.repeats, args.threads)
    print(f"{args.model}, one {args.image_size}×{args.image_size} image, CPU, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}, over HTTP")
    print(f"{'':36} {'ms':>8} {'ratio':>7}")
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:7.1f}"
        print(f"{row['name']:36} {row['ms']:8.1f} {ratio:>7}")


if __name__ == "__main__":
    main()
