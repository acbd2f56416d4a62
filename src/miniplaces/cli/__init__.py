"""`miniplaces <command>`: the command line.

Each command group lives in its own module under `miniplaces.cli` and exposes
`register(subparsers)`, which adds its sub-commands and sets `func` on them.
Commands parse arguments and call the library; heavy imports (torch) happen
inside the command functions so that `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from miniplaces import __version__
from miniplaces.errors import MiniPlacesError

# One module per command group; each adds its sub-commands in `register`.
COMMAND_MODULES: tuple[str, ...] = (
    "miniplaces.cli.data_commands",
    "miniplaces.cli.model_commands",
    "miniplaces.cli.train_commands",
    "miniplaces.cli.report_commands",
    "miniplaces.cli.predict_commands",
    "miniplaces.cli.demo_commands",
    "miniplaces.cli.bench_commands",
    "miniplaces.cli.cache_commands",
    "miniplaces.cli.analysis_commands",
    "miniplaces.cli.export_commands",
    "miniplaces.cli.serve_commands",
    "miniplaces.cli.study_commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="miniplaces",
        description="Train, dissect and attack scene classifiers on MIT MiniPlaces.",
    )
    parser.add_argument("--version", action="version", version=f"miniplaces {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def for_the_command_line(err: MiniPlacesError) -> str:
    """The library's message, plus the command that fixes it where the error carries one."""
    build = getattr(err, "build", None)  # a CacheError's CacheBuild
    if build is not None:
        from miniplaces.cli.cache_commands import cache_command

        fix = "rebuild" if build.force else "build"
        return f"{getattr(err, 'problem', err)}; {fix} it with `{cache_command(build)}`"
    dataset_fix = getattr(err, "fix", None)  # a LayoutError's or DownloadError's DatasetFix
    if dataset_fix is not None:
        root = dataset_fix.root
        return f"{err}\n" + {
            "get": f"Run `miniplaces download --root {root}` or `miniplaces synth --root {root}`.",
            "verify": f"`miniplaces verify --root {root}` lists every problem.",
            "download": f"`miniplaces download --root {root}` then uses the files in place; "
                        f"`miniplaces verify --root {root}` checks the result.",
        }[dataset_fix.action]
    return str(err)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except MiniPlacesError as err:
        print(f"error: {for_the_command_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)
