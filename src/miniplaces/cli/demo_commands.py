"""`miniplaces demo`: the whole system on this machine in a few minutes."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from miniplaces.cli.command import add_command, image_size, non_negative_int, positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "demo", run_demo_command)
    parser.add_argument("--root", type=Path, help="a MiniPlaces folder (default: synthetic data under OUT/data)")
    parser.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: demo/)")
    parser.add_argument("--epochs", type=positive_int, default=5, help="training epochs (default: 5)")
    parser.add_argument("--image-size", type=image_size, default=64, help="image size for training and analysis (64)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="training batch (default: 64)")
    parser.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate (default: 0.05)")
    parser.add_argument("--classes", type=positive_int, default=10, help="synthetic classes (default: 10)")
    parser.add_argument("--per-class", type=positive_int, default=80, help="synthetic train images per class (80)")
    parser.add_argument("--val-per-class", type=positive_int, default=20, help="synthetic val images per class (20)")
    parser.add_argument("--limit-train-batches", type=positive_int, help="at most this many training batches per epoch")
    parser.add_argument("--limit-val-batches", type=positive_int, help="at most this many val batches per epoch")
    parser.add_argument("--attack-images", type=positive_int, default=64, help="val images to attack (default: 64)")
    parser.add_argument("--saliency-images", type=positive_int, default=16, help="val images in the saliency grid (16)")
    parser.add_argument("--loader", choices=("dataloader", "cache"), default="cache",
                        help="the decoded-cache loader (default; faster on a CPU) or the per-sample DataLoader")
    parser.add_argument("--workers", type=non_negative_int, default=min(2, os.cpu_count() or 1),
                        help="loader processes")
    parser.add_argument("--no-unfold", action="store_true",
                        help="skip the simplenet_unfold run that the report compares with native convolution")
    parser.add_argument("--threads", type=non_negative_int, metavar="N",
                        help="torch intra-op threads (default: torch's own setting; 0 means the same). "
                        "--threads 1 helps on a busy machine, where waiting OpenMP threads slowed training 20-60×")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda")


def run_demo_command(args: argparse.Namespace) -> int:
    from miniplaces.workflows.demo import DemoOptions, run_demo

    options = DemoOptions(
        out=args.out, root=args.root, epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size,
        lr=args.lr, classes=args.classes, per_class=args.per_class, val_per_class=args.val_per_class,
        device=args.device, workers=args.workers, loader=args.loader, limit_train_batches=args.limit_train_batches,
        limit_val_batches=args.limit_val_batches, saliency_images=args.saliency_images,
        attack_images=args.attack_images, threads=args.threads or None,
        unfold=not args.no_unfold,
    )
    phases = ["data", "train", *(["unfold"] if options.unfold else []), "eval", "saliency", "attack", "report"]

    def show(phase: str, message: str, seconds: float | None) -> None:
        step = f"[{phases.index(phase) + 1}/{len(phases)}] {phase:<8}"
        if seconds is None:
            print(f"{step} {message} …", flush=True)
        else:
            print(f"{step} done in {seconds:.1f} s: {message}", flush=True)

    start = time.perf_counter()
    result = run_demo(options, on_phase=show)
    total = time.perf_counter() - start
    print()
    print(result.table, end="")
    print()
    print("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()) + f"; total {total:.1f} s")
    print(f"report: {result.html}")
    print(f"open {result.html.resolve().as_uri()}")
    return 0
