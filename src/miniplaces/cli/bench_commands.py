"""`miniplaces bench NAME`: every registered benchmark (`miniplaces.bench.registry`) as a table, JSON and plot.

The sub-commands, their flags, defaults and help come from the registry: an option is written once,
in its benchmark's entry, and the command line spells `batch_size` as `--batch-size`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from miniplaces.bench.registry import BENCHMARKS, Benchmark, Option, get_benchmark
from miniplaces.cli.command import non_negative_int


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _help(option: Option) -> str:
    default = "see above" if option.default is None else _shown(option.default)
    quick = "" if option.quick is None else f"; --quick: {_shown(option.quick)}"
    return f"{option.help} (default: {default}{quick})"


def _add_benchmark(commands: argparse._SubParsersAction, benchmark: Benchmark) -> None:
    parser = commands.add_parser(
        benchmark.name, help=benchmark.description,
        description=f"{benchmark.description}. Prints the machine, the settings and a table of ratios "
        "against a baseline measured in the same run; writes OUT/NAME.json (and OUT/NAME.png when the "
        "benchmark draws one).",
    )
    for option in benchmark.options:
        flag = "--" + option.name.replace("_", "-")
        # None means "not given", so that --quick can tell a default from an explicit value.
        if option.type is bool:
            parser.add_argument(flag, dest=option.name, action=argparse.BooleanOptionalAction, default=None,
                                help=_help(option))
        else:
            parser.add_argument(flag, dest=option.name, type=option.type, default=None,
                                metavar=option.name.upper(), help=_help(option))
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N "
                        "or mps (default: auto)")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="torch CPU threads (default: 0, torch's choice)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, a smoke test of the benchmark rather than a measurement")
    parser.add_argument("--out", type=Path, default=Path("bench"),
                        help=f"folder for {benchmark.name}.json (and .png) (default: bench)")
    parser.set_defaults(func=run_bench, benchmark=benchmark.name)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS),
                                   description="Run a benchmark, print its table and write JSON (+ PNG) to --out.")
    commands = parser.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    for benchmark in BENCHMARKS.values():
        _add_benchmark(commands, benchmark)


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from miniplaces.engine.device import resolve_device
    from miniplaces.fileio import atomic_write_json

    benchmark = get_benchmark(args.benchmark)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, source="--device")
    given = {option.name: getattr(args, option.name) for option in benchmark.options}
    result = benchmark.run(device, given, quick=args.quick)
    print(result.header())
    print(benchmark.table(result), end="")
    print(f"wrote {atomic_write_json(args.out / f'{benchmark.name}.json', result.to_dict())}")
    figure = benchmark.figure(result, args.out / f"{benchmark.name}.png")
    if figure is not None:
        print(f"wrote {figure}")
    return 0
