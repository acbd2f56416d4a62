"""Progress of a long command, shown the way its output can take it.

Library functions take `progress: Callable[[int], None] | None`, called with the number of items
(images) done since the last call; workflows that know a task's size take a `StartProgress` and open
one task per phase with it. The CLI owns the display and passes `start_progress`:
- on a terminal, a tqdm bar with its ETA, cleared when the task ends;
- otherwise (nohup, CI, a pipe), a plain line at a steady interval, e.g.
  `attack: 120/200 images (60%), 2.1 img/s, ETA 38 s`, and a final line when the task ends.

The interval defaults to 30 s; `MINIPLACES_PROGRESS_INTERVAL` (seconds, 0: every update) sets it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, TextIO

from miniplaces.errors import MiniPlacesError

INTERVAL_ENV = "MINIPLACES_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0

Advance = Callable[[int], None]


class StartProgress(Protocol):
    """Opens a task of `total` items (None: unknown) named `label`; the context gives its `Advance`."""

    def __call__(self, label: str, total: int | None) -> AbstractContextManager[Advance]: ...


def progress_interval(environ: dict[str, str] | None = None) -> float:
    """Seconds between plain progress lines: `MINIPLACES_PROGRESS_INTERVAL`, else 30."""
    text = (os.environ if environ is None else environ).get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise MiniPlacesError(f"{INTERVAL_ENV}={text!r} is not a number of seconds ≥ 0; "
                              "set it to e.g. 30, or 0 for a line at every update")
    return value


def duration_text(seconds: float) -> str:
    """`38 s`, `6 min 20 s`, `2 h 05 min`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _rate_text(rate: float, unit: str) -> str:
    return f"{rate:.1f} {unit}/s" if rate >= 0.1 or rate == 0 else f"{rate * 60:.1f} {unit}/min"


class ProgressLine:
    """The plain-text display: a line every `interval` seconds of `clock`, and one when closed.

    Calling it advances the count, as `Advance` says. The rate is the count over the time since the task
    opened; the ETA is what is left at that rate.
    """

    def __init__(self, label: str, total: int | None, *, unit: str = "images", rate_unit: str = "img",
                 interval: float = DEFAULT_INTERVAL_S, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.unit, self.rate_unit = label, total, unit, rate_unit
        self.interval, self.stream, self.clock = interval, stream, clock
        self.done = 0
        self.started = self.last_line = clock()
        self.closed = False

    def __call__(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self.last_line >= self.interval:
            self.last_line = now
            self._write(self.line(now))

    def line(self, now: float) -> str:
        """`label: done/total unit (p%), rate, ETA t` (without the total's parts when it is unknown)."""
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total is None:
            return f"{self.label}: {self.done} {self.unit}, {_rate_text(rate, self.rate_unit)}"
        percent = 100.0 * self.done / self.total if self.total else 100.0
        text = (f"{self.label}: {self.done}/{self.total} {self.unit} ({percent:.0f}%), "
                f"{_rate_text(rate, self.rate_unit)}")
        if rate > 0:
            text += f", ETA {duration_text(max(0, self.total - self.done) / rate)}"
        return text

    def final_line(self, now: float) -> str:
        """`label: done, N unit in t (rate)`."""
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        rate_part = f" ({_rate_text(rate, self.rate_unit)})" if elapsed > 0 else ""
        return f"{self.label}: done, {self.done} {self.unit} in {duration_text(elapsed)}{rate_part}"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(self.final_line(self.clock()))

    def _write(self, text: str) -> None:
        stream = sys.stderr if self.stream is None else self.stream
        print(text, file=stream, flush=True)

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        if kind is None:  # a failed task says nothing more: its error follows
            self.close()
        else:
            self.closed = True


class ProgressBar:
    """The terminal display: a tqdm bar (count, rate, ETA), left off the screen when closed."""

    def __init__(self, label: str, total: int | None, *, rate_unit: str = "img", stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=label, unit=rate_unit, leave=False, dynamic_ncols=True,
                        file=sys.stderr if stream is None else stream)

    def __call__(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def start_progress(label: str, total: int | None, *, unit: str = "images", rate_unit: str = "img",
                   stream: TextIO | None = None) -> ProgressBar | ProgressLine:
    """The display for a task on `stream` (default stderr): a bar on a terminal, else plain lines.

    A `StartProgress`: `with start_progress("attack", 200) as advance: ... advance(32) ...`.
    """
    out = sys.stderr if stream is None else stream
    if out.isatty():
        return ProgressBar(label, total, rate_unit=rate_unit, stream=stream)
    return ProgressLine(label, total, unit=unit, rate_unit=rate_unit, interval=progress_interval(), stream=stream)


def prefixed(start: StartProgress | None, prefix: str) -> StartProgress | None:
    """`start` with every task's label after `prefix` (e.g. the study's experiment); None stays None."""
    if start is None:
        return None
    shown = start
    return lambda label, total: shown(f"{prefix} {label}", total)


def no_progress(label: str, total: int | None) -> AbstractContextManager[Advance]:
    """A `StartProgress` that shows nothing (the default of the workflows)."""
    return _Silent()


class _Silent:
    def __call__(self, n: int) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass
