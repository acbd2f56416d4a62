"""The one way the benchmarks time work: wall-clock seconds between two device synchronisations.

`timed` measures one call; `time_interleaved` measures several candidates round-robin (the
order reversed every other round), so that a machine shared with other jobs slows them alike
and the ratios between them stay meaningful even when the absolute times drift.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from miniplaces.engine.device import synchronize


def timed(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Seconds `fn()` takes, the device's queued work included (synchronised before and after)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_interleaved(candidates: Mapping[str, Callable[[], Any]], device: torch.device | str, *,
                     repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each candidate in each of `repeats` rounds, after `warmup` untimed rounds.

    Within a round every candidate runs once; odd rounds run them in reverse order, so none
    always follows the same neighbour (caches, allocator state, a neighbour's turbo boost).
    """
    names = list(candidates)
    for _ in range(warmup):  # allocator, kernels, lazy initialisation
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            times[name].append(timed(candidates[name], device))
    return times


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    """The median of each candidate's times."""
    return {name: statistics.median(values) for name, values in times.items()}
