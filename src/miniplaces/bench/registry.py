"""The table of benchmarks: name → module, one-line description, options (with defaults and quick values).

`miniplaces bench NAME` builds its sub-commands, flags, defaults and help from this table, so a
benchmark's options are written once. Each entry's module (imported only when it runs, so that
`--help` does not import torch) defines:

- `run(*, device: torch.device, **options) -> BenchResult`: the measurement, options by keyword;
- `table(result: BenchResult) -> str`: the rows as a Markdown table;
- optionally `figure(result: BenchResult) -> matplotlib.figure.Figure`: a plot of the rows.

Every benchmark times with `miniplaces.bench.timing` (device synchronised around each timed call)
and prints ratios against a baseline measured in the same run; `BenchResult` carries the machine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from miniplaces import schema
from miniplaces.errors import MiniPlacesError

if TYPE_CHECKING:
    import torch

    from miniplaces.bench.result import BenchResult


def names(text: str) -> tuple[str, ...]:
    """`"a,b, c"` → `("a", "b", "c")`: the type of an option that lists names."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class Option:
    """One keyword argument of a benchmark's `run`.

    Attributes:
        name: the keyword (`batch_size`); the command line spells it `--batch-size`.
        default: the value of a full run.
        help: what it sets, in a few words.
        type: turns the command line's text into the value (`int`, `float`, `str`, `Path`, `names`);
            `bool` options become a `--name/--no-name` switch.
        quick: the value of a quick run (tiny sizes, for a smoke test); None keeps the default.
        minimum: the smallest value allowed, for numbers.
    """

    name: str
    default: Any
    help: str
    type: Callable[[str], Any] = int
    quick: Any = None
    minimum: int | None = None

    def check(self, value: Any) -> schema.Problem | None:
        """What is wrong with `value` for this option (its type, when `type` is one, and its minimum), or None."""
        kind = self.type if self.type in (int, float, bool, str) else Any
        hint = kind | None if self.default is None and kind is not Any else kind
        return schema.check_value(hint, value, self.name, {"minimum": self.minimum})[1]


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: `module` holds its `run`, `table` and optional `figure`."""

    name: str
    module: str
    description: str
    options: tuple[Option, ...]

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def resolve(self, given: Mapping[str, Any] | None = None, *, quick: bool = False) -> dict[str, Any]:
        """The options a run uses: each default, replaced by its quick value when `quick`, replaced by
        the value in `given` when there is one (None in `given` means "not given")."""
        given = dict(given or {})
        unknown = set(given) - {option.name for option in self.options}
        if unknown:
            raise MiniPlacesError(f"benchmark {self.name!r} has no option {sorted(unknown)[0]!r}; "
                                  f"its options are {', '.join(option.name for option in self.options)}")
        values: dict[str, Any] = {}
        for option in self.options:
            value = option.quick if quick and option.quick is not None else option.default
            if given.get(option.name) is not None:
                value = given[option.name]
            problem = option.check(value)
            if problem is not None:
                must = f"at least {option.minimum}" if problem.kind == "range" else problem.expected
                raise MiniPlacesError(f"benchmark {self.name!r}: {option.name} is {value!r}; it must be {must}")
            values[option.name] = value
        return values

    def run(self, device: torch.device, given: Mapping[str, Any] | None = None, *,
            quick: bool = False) -> BenchResult:
        """Run it on `device` with `resolve(given, quick=quick)`."""
        return self.load().run(device=device, **self.resolve(given, quick=quick))

    def table(self, result: BenchResult) -> str:
        return str(self.load().table(result))

    def figure(self, result: BenchResult, path: Path) -> Path | None:
        """Write the result's figure to `path` as a PNG; None (nothing written) for a benchmark without one."""
        import io

        from miniplaces.fileio import atomic_write_bytes

        draw = getattr(self.load(), "figure", None)
        if draw is None:
            return None
        buffer = io.BytesIO()
        draw(result).savefig(buffer, format="png", dpi=110)
        return atomic_write_bytes(path, buffer.getvalue())


# Options that mean the same in every benchmark that takes them.
MODEL = Option("model", "simplenet", "registered model name", type=str)
IMAGE_SIZE = Option("image_size", 128, "input side in pixels", quick=32, minimum=8)
ROOT = Option("root", None, "dataset folder (default: shared/miniplaces above the working folder when present, "
              "else a synthetic set)", type=Path)
SYNTHETIC = Option("synthetic", False, "use a synthetic set even when the real one is found", type=bool, quick=True)

BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark(
            "conv", "miniplaces.bench.conv",
            "time and saved memory of UnfoldConv2d (cache, recompute) against nn.Conv2d on SimpleNet's layers",
            (
                Option("batch_size", 64, "images per batch", quick=2, minimum=1),
                IMAGE_SIZE,
                Option("repeats", 7, "timed rounds (median)", quick=1, minimum=1),
                Option("warmup", 1, "untimed rounds first", minimum=0),
                Option("simplenet", True, "add a row for the whole SimpleNet", type=bool),
                Option("bf16", False, "run every variant under bf16 autocast", type=bool),
            ),
        ),
        Benchmark(
            "data", "miniplaces.bench.data",
            "images/s of the per-sample DataLoader (PIL + train transform) against the decoded-cache loader",
            (
                ROOT,
                SYNTHETIC,
                Option("batches", 20, "timed batches per loader", quick=2, minimum=1),
                Option("batch_size", 256, "images per batch", quick=8, minimum=1),
                Option("warmup", 2, "untimed batches first (worker start-up, page-in)", quick=1, minimum=0),
                Option("workers", 2, "worker processes of the per-sample DataLoader", quick=0, minimum=0),
                Option("image_size", 128, "output side in pixels (and the cache's image size)", quick=32,
                       minimum=8),
                Option("cache_dir", None, "where the decoded cache lives (default: the cache's own choice)",
                       type=Path),
            ),
        ),
        Benchmark(
            "train", "miniplaces.bench.train",
            "images/s of the engine's train_one_epoch against a hand-written loop, fp32/channels-last/bf16, "
            "with training FLOP/s and its fraction of a matmul peak",
            (
                MODEL,
                Option("batch_size", 256, "images per batch", quick=4, minimum=1),
                IMAGE_SIZE,
                Option("steps", 20, "training steps per timed round", quick=2, minimum=1),
                Option("rounds", 5, "timed rounds per loop (median; one more warms up)", quick=1, minimum=1),
                Option("variants", ("fp32", "channels_last", "bf16", "bf16+channels_last"),
                       "comma-separated variants among fp32, channels_last, bf16, bf16+channels_last; '+compile' "
                       "after any (or compile alone) runs both loops through torch.compile, its ratio against the "
                       "same variant uncompiled", type=names, quick=("fp32",)),
                Option("peak_size", 2048, "side of the square matmul timed for the peak FLOP/s of each dtype",
                       quick=128, minimum=16),
                Option("peak_window_s", 0.25, "seconds of each timed window of the peak matmul (the best of 5 "
                       "windows after one warm-up)", type=float, quick=0.01, minimum=0),
                Option("seed", 0, "seed of the model and the batches"),
                Option("compile_backend", "inductor", "torch.compile backend of the +compile variants (inductor, "
                       "aot_eager, eager)", type=str),
            ),
        ),
        Benchmark(
            "attack", "miniplaces.bench.attack",
            "time per image of PGD-k and FGSM against k forward+backward passes (input gradient)",
            (
                MODEL,
                Option("num_classes", 100, "classes of the model", minimum=2),
                Option("batch_size", 32, "images per batch", quick=2, minimum=1),
                IMAGE_SIZE,
                Option("steps", 10, "PGD steps (k)", quick=2, minimum=1),
                Option("repeats", 5, "timed rounds (median)", quick=1, minimum=1),
                Option("seed", 0, "seed of the model and the batch"),
            ),
        ),
        Benchmark(
            "optim", "miniplaces.bench.optim",
            "time of one optimiser step (SGD, AdamW, Muon with Newton-Schulz in bf16 and in float32) against "
            "SGD's, and its share of a training step",
            (
                Option("model", "fastnet", "registered model name", type=str),
                Option("batch_size", 256, "images of the forward+backward that makes the gradients", quick=4,
                       minimum=1),
                Option("image_size", 56, "side of those images in pixels", quick=16, minimum=8),
                Option("bf16", True, "run the forward+backward under bf16 autocast", type=bool),
                Option("repeats", 7, "timed rounds (median)", quick=1, minimum=1),
                Option("seed", 0, "seed of the model and the batch"),
            ),
        ),
        Benchmark(
            "recipes", "miniplaces.bench.recipes",
            "time per training image and val accuracy of configs/fast.yaml against configs/simplenet.yaml "
            "(same data, size and epochs)",
            (
                ROOT,
                SYNTHETIC,
                Option("image_size", 64, "training and validation side in pixels", quick=32, minimum=16),
                Option("epochs", 10, "epochs of each recipe (the same training images for both)", quick=1,
                       minimum=1),
                Option("bf16", True, "also train the fast recipe in bf16 (autocast), beside its float32 row",
                       type=bool),
                Option("limit_train_batches", None, "at most this many training batches per epoch, of the "
                       "baseline's batch size: the same images for both (default: all)", quick=2, minimum=1),
                Option("limit_val_batches", None, "at most this many validation batches, of the baseline's batch "
                       "size: the same images for both (default: all)", quick=1, minimum=1),
                Option("batch_size", None, "images per batch for both (default: each recipe's own)", quick=8,
                       minimum=1),
            ),
        ),
        Benchmark(
            "serve", "miniplaces.bench.serve",
            "start-up of `miniplaces serve` and one image's predict, saliency and attack over HTTP",
            (
                MODEL,
                IMAGE_SIZE,
                Option("repeats", 5, "timed requests per endpoint (median)", quick=1, minimum=1),
            ),
        ),
    )
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name`."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise MiniPlacesError(f"unknown benchmark {name!r}; registered: {', '.join(BENCHMARKS)}") from None
