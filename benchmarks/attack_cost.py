"""PGD-10 against 10 × a forward+backward on SimpleNet (128×128, batch 32), measured in the same run.

Usage: PYTHONPATH=src python benchmarks/attack_cost.py [--device cpu] [--repeats 5]
Evidence (README `attacks`): on the 2-core CPU shared with ~7 jobs, two runs measured PGD-10 at
1.17–1.56 × ten forward+backward passes (≈ 0.3–0.5 s per image); the extra per-step work is element-wise.
"""

from __future__ import annotations

import argparse

import torch

from miniplaces.bench.attack import measure_attack_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="simplenet")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rows = measure_attack_cost(model_name=args.model, batch_size=args.batch_size, image_size=args.image_size,
                               steps=args.steps, repeats=args.repeats, device=args.device)
    print(f"{args.model}, batch {args.batch_size}, {args.image_size}×{args.image_size}, device {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'':28} {'ms/image':>9} {'ratio':>7}")
    for row in rows:
        print(f"{row['name']:28} {row['ms_per_image']:9.2f} {row['ratio']:7.2f}")


if __name__ == "__main__":
    main()
