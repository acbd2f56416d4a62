"""`miniplaces predict`: top-k classes of images, or the MiniPlaces challenge submission."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from miniplaces.cli.command import add_command, image_size, non_negative_int, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "predict", run_predict)
    parser.add_argument("images", nargs="*", type=Path, metavar="IMAGE_OR_DIR", help="image files or folders")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a checkpoint of `miniplaces train`, a run folder (its checkpoints/best.pt), "
                             "or a safetensors folder of `miniplaces export`")
    parser.add_argument("--top", type=positive_int, default=5, help="how many categories per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--challenge", action="store_true", help="write the challenge file for --root's test split")
    parser.add_argument("--root", type=Path, help="dataset folder (with --challenge)")
    parser.add_argument("--out", type=Path, help="challenge file to write (with --challenge)")
    parser.add_argument("--image-size", type=image_size, help="crop size (default: the checkpoint's, else 128)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="images per forward pass (default 128)")
    parser.add_argument("--workers", type=non_negative_int, default=min(2, os.cpu_count() or 1),
                        help="loader processes")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")


def run_predict(args: argparse.Namespace) -> int:
    from miniplaces.errors import MiniPlacesError
    from miniplaces.progress import start_progress
    from miniplaces.workflows.predict import predict_challenge, predict_files

    if args.challenge:
        if args.root is None or args.out is None or args.images:
            raise MiniPlacesError("--challenge takes --root DIR and --out FILE, and no image arguments")
    elif not args.images:
        raise MiniPlacesError("give image files or folders to classify (or --challenge --root DIR --out FILE)")

    if args.challenge:
        out, count = predict_challenge(args.checkpoint, args.root, args.out, image_size=args.image_size,
                                       batch_size=args.batch_size, workers=args.workers, device=args.device,
                                       progress=start_progress)
        print(f"{count} test images → {out}")
        return 0

    predictions = predict_files(args.checkpoint, args.images, top=args.top, image_size=args.image_size,
                                batch_size=args.batch_size, device=args.device, progress=start_progress)
    if args.json:
        print(json.dumps([p.as_dict() for p in predictions], indent=2))
        return 0
    width = max(len(str(p.path)) for p in predictions)
    print(f"{'image':<{width}}  rank  {'probability':>11}  category")
    for prediction in predictions:
        rows = zip(prediction.labels, prediction.names, prediction.probabilities, strict=True)
        for rank, (label, name, prob) in enumerate(rows, 1):
            image = str(prediction.path) if rank == 1 else ""
            print(f"{image:<{width}}  {rank:>4}  {prob:>11.4f}  {name} ({label})")
    return 0
