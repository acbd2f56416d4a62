"""`miniplaces bench conv` and `bench data`: the benchmarks as a table, a JSON file and a plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: unfold vs native convolution, data throughput",
                                   description="Run a benchmark, print its table and write JSON + PNG to --out.")
    commands = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)

    conv = commands.add_parser(
        "conv", help="time and saved memory of UnfoldConv2d (cache, recompute) vs nn.Conv2d",
        description="Forward+backward time (median, interleaved) and memory saved for backward of native "
        "nn.Conv2d and UnfoldConv2d in both memory modes, on SimpleNet's layer shapes, plus the whole model.",
    )
    conv.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    conv.add_argument("--image-size", type=int, default=128, help="input side (default: 128)")
    conv.add_argument("--repeats", type=int, default=7, help="timed repeats per variant (default: 7)")
    conv.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    conv.add_argument("--no-simplenet", action="store_true", help="skip the whole-model row")
    conv.add_argument("--out", type=Path, default=Path("bench"), help="folder for conv.json, conv.png (bench/)")
    conv.set_defaults(func=run_bench_conv)

    data = commands.add_parser(
        "data", help="images/s of the per-sample DataLoader vs the decoded-cache loader",
        description="Images per second of the per-sample DataLoader (PIL + the study's train transform) and of "
        "the batched cache loader on the train split of --root (default: ../shared/miniplaces when present, "
        "else a synthetic set).",
    )
    data.add_argument("--root", type=Path, help="dataset folder (default: ../shared/miniplaces or synthetic)")
    data.add_argument("--batches", type=int, default=20, help="timed batches per loader (default: 20)")
    data.add_argument("--batch-size", type=int, default=256, help="images per batch (default: 256)")
    data.add_argument("--workers", type=int, default=2, help="per-sample DataLoader workers (default: 2)")
    data.add_argument("--image-size", type=int, default=128, help="output side (default: 128)")
    data.add_argument("--out", type=Path, default=Path("bench"), help="folder for data.json, data.png (bench/)")
    data.set_defaults(func=run_bench_data)


def _write(out: Path, name: str, rows: list[dict]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return path


def run_bench_conv(args: argparse.Namespace) -> int:
    import torch

    from miniplaces.bench.conv import run_conv_benchmark
    from miniplaces.engine.device import resolve_device
    from miniplaces.report.bench import conv_figure, conv_table

    device = resolve_device(args.device)
    rows = run_conv_benchmark(batch_size=args.batch_size, image_size=args.image_size, repeats=args.repeats,
                              device=str(device), include_simplenet=not args.no_simplenet)
    print(f"device {device}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.image_size}×{args.image_size}, median of {args.repeats}, forward+backward; "
          "unfold variants as ratios to native")
    print(conv_table(rows), end="")
    print(f"wrote {_write(args.out, 'conv', rows)}")
    print(f"wrote {conv_figure(rows, args.out / 'conv.png')}")
    return 0


def run_bench_data(args: argparse.Namespace) -> int:
    from miniplaces.bench.data import run_data_benchmark
    from miniplaces.errors import MiniPlacesError
    from miniplaces.report.bench import data_figure, data_table

    try:
        rows = run_data_benchmark(root=args.root, batches=args.batches, batch_size=args.batch_size,
                                  workers=args.workers, image_size=args.image_size)
    except ValueError as err:  # too few images for the batches asked for
        raise MiniPlacesError(f"{err}; lower --batches or --batch-size") from err
    print(f"data: {rows[0]['data']}; {args.batches} timed batches of {args.batch_size}")
    print(data_table(rows), end="")
    build = rows[1].get("cache_build_s") if len(rows) > 1 else None
    if build:
        print(f"cache built in {build:.1f} s (reused on later runs)")
    print(f"wrote {_write(args.out, 'data', rows)}")
    print(f"wrote {data_figure(rows, args.out / 'data.png')}")
    return 0
