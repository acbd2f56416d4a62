"""`add_command`: one sub-command of `miniplaces`, with its help and description (`cli.texts`) and the function it runs;
and the argparse types every numeric flag uses, so a bad number is refused before anything runs."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from miniplaces.cli.texts import COMMANDS
from miniplaces.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE


def add_command(subparsers: argparse._SubParsersAction, name: str,
                run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """Add `miniplaces NAME`, with its help and description from `COMMANDS`; `run(args)` is called with its parsed
    arguments and returns the exit code."""
    text = COMMANDS[name]
    parser = subparsers.add_parser(name, help=text.help, description=text.description)
    parser.set_defaults(func=run)
    # Also after the command (`miniplaces train … --debug`); SUPPRESS keeps the global flag's value otherwise.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the Python traceback of an error")
    return parser


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded(name: str, kind: type, minimum: float, inclusive: bool, doc: str) -> Callable[[str], int | float]:
    """An argparse type called `name`: a `kind` number ≥ `minimum` (> `minimum` when not `inclusive`)."""
    relation = "≥" if inclusive else ">"

    def parse(text: str) -> int | float:
        value = kind(_number(text, kind))
        if value < minimum or (value == minimum and not inclusive):
            shown = value if kind is int else f"{value:g}"
            raise argparse.ArgumentTypeError(f"must be {relation} {minimum}, got {shown}")
        return value

    parse.__name__ = parse.__qualname__ = name
    parse.__doc__ = doc
    return parse


positive_int = _bounded("positive_int", int, 1, True, "An integer ≥ 1 (a count, a batch size, a number of steps).")
non_negative_int = _bounded("non_negative_int", int, 0, True,
                            "An integer ≥ 0 (loader workers, threads: 0 means none / the default).")
positive_float = _bounded("positive_float", float, 0, False, "A finite number > 0.")
non_negative_float = _bounded("non_negative_float", float, 0, True, "A finite number ≥ 0.")


def port(text: str) -> int:
    """A TCP port, 0 … 65535 (0: the system picks a free one)."""
    value = int(_number(text, int))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return value


def stored_image_size(text: str) -> int:
    """The side of images that are made or cached (synth, cache): 1 … MAX_IMAGE_SIZE pixels."""
    value = int(_number(text, int))
    if not 1 <= value <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_IMAGE_SIZE} pixels, got {value}")
    return value


def image_size(text: str) -> int:
    """An image side that a model trains or runs at, MIN_IMAGE_SIZE … MAX_IMAGE_SIZE pixels."""
    value = int(_number(text, int))
    if not MIN_IMAGE_SIZE <= value <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {value}")
    return value
