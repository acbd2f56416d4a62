"""Images/s of the engine's training step against a minimal hand-written loop (same model, data, batch).

Target: engine ≥ 0.95 × hand loop. Also the gain of channels-last and bf16 autocast over fp32.
Usage: python benchmarks/train_throughput.py [--device cuda] [--batch-size 256] [--image-size 128] [--steps 20]
"""

from __future__ import annotations

import argparse

import torch

from miniplaces.bench.train import VARIANTS, measure_train_throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="simplenet")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per loop (interleaved)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model}, batch {args.batch_size}, {args.image_size}×{args.image_size}, {args.steps} steps × "
          f"{args.rounds} rounds (median), {name}")
    rows = measure_train_throughput(model_name=args.model, device=device, batch_size=args.batch_size,
                                    image_size=args.image_size, steps=args.steps, rounds=args.rounds,
                                    variants=tuple(args.variants.split(",")))
    print(f"{'variant':<20} {'loop':<7} {'images/s':>10} {'ratio':>7}  against")
    for row in rows:
        print(f"{row['variant']:<20} {row['loop']:<7} {row['images_per_s']:>10.1f} {row['ratio']:>7.3f}  "
              f"{row['against']}")


if __name__ == "__main__":
    main()
