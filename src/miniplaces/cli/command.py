"""`add_command`: one sub-command of `miniplaces`, with its help, description and the function it runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_command(subparsers: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], int], *,
                help: str, description: str) -> argparse.ArgumentParser:
    """Add `miniplaces NAME`; `run(args)` is called with its parsed arguments and returns the exit code."""
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.set_defaults(func=run)
    return parser
