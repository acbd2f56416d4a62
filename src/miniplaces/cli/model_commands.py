"""`miniplaces models`: the registered models, their size and compute."""

from __future__ import annotations

import argparse

from miniplaces.cli.command import add_command, image_size, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "models", run_models)
    parser.add_argument("names", nargs="*", metavar="NAME", help="only these models (default: all)")
    parser.add_argument("--image-size", type=image_size, default=128, help="image side for the MAC count (default 128)")
    parser.add_argument("--num-classes", type=positive_int, default=100, help="classes of the head (default 100)")


def run_models(args: argparse.Namespace) -> int:
    from miniplaces.models.summary import summarize_models

    rows = summarize_models(args.names, image_size=args.image_size, num_classes=args.num_classes)
    header = ("name", "params", f"MACs@{args.image_size}", "description")
    table = [(r.name, f"{r.parameters / 1e6:.2f} M", f"{r.macs / 1e6:.1f} M", r.description) for r in rows]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(3)]
    for row in [header, *table]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}")
    return 0
