"""`miniplaces <command>`: the command line.

Each command group lives in its own module under `miniplaces.cli` and exposes
`register(subparsers)`, which adds its sub-commands and sets `func` on them.
Commands parse arguments and call the library; heavy imports (torch) happen
inside the command functions so that `--help` stays fast.

Exit codes: 0 done; 2 a problem the user can fix (a bad flag, file or value: a
`MiniPlacesError`, or an `OSError` such as a full disk or a folder that cannot be
written), printed as one `error:` line; 1 anything else, i.e. a bug in miniplaces,
also one line; 130 interrupted. `--debug` (or `MINIPLACES_DEBUG=1`) prints the
traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
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


DEBUG_ENV = "MINIPLACES_DEBUG"
DEBUG_HINT = f"run with --debug or {DEBUG_ENV}=1 for the traceback"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="miniplaces",
        description="Train, dissect and attack scene classifiers on MIT MiniPlaces.",
    )
    parser.add_argument("--version", action="version", version=f"miniplaces {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the Python traceback of an error (or set {DEBUG_ENV}=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
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


def _debugging(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "").strip().lower() not in (
        "", "0", "false", "no")


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def describe_os_error(err: OSError) -> str:
    """`PATH: No space left on device` for an OSError that escaped the library (the path when it has one)."""
    reason = err.strerror or _one_line(err)
    return f"{err.filename}: {reason}" if err.filename is not None else reason


def set_without_equals(argv: Sequence[str]) -> str | None:
    """The hint for `--set KEY VALUE` (a space where `=` belongs), or None when every `--set` has its `=`."""
    for i, flag in enumerate(argv[:-1]):
        key, value = argv[i + 1], (argv[i + 2] if i + 2 < len(argv) else None)
        if flag == "--set" and "=" not in key and not key.startswith("-"):
            form = f"--set {key}={value}" if value is not None and not value.startswith("-") else f"--set {key}=VALUE"
            return f"--set takes KEY=VALUE in one word: write `{form}`"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    hint = set_without_equals(argv)
    if hint is not None:
        print(f"error: {hint}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `miniplaces`: what there is to run
        parser.print_help()
        return 0
    debug = _debugging(args)
    try:
        code = args.func(args)
    except MiniPlacesError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {for_the_command_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        # The disk, the permissions or the file system: the user's to fix, so exit 2 like any bad input.
        if debug:
            traceback.print_exc()
        print(f"error: {describe_os_error(err)}" + ("" if debug else f" ({DEBUG_HINT})"), file=sys.stderr)
        return 2
    except Exception as err:  # a bug: still one line (and exit 1, so scripts can tell it from a bad input)
        if debug:
            traceback.print_exc()
        print(f"error: {type(err).__name__}: {_one_line(err)}" + ("" if debug else f" ({DEBUG_HINT})"),
              file=sys.stderr)
        return 1
    return int(code or 0)
