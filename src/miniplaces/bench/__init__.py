"""Every benchmark of the project, behind `miniplaces bench NAME`.

- `registry.py`: the table name → module, description, options (defaults and `--quick` values);
  the command line's sub-commands and flags are built from it.
- `timing.py`: the one timing helper (`timed`, `time_interleaved`), device synchronised around each call.
- `result.py`: `BenchResult` (settings, baseline, rows, `Machine`), the JSON the command writes.
- `conv.py`, `data.py`, `train.py`, `attack.py`: one module per benchmark.

Adding a benchmark (the GPU check, say, from a module `miniplaces/bench/gpu.py`):

1. In the module, write `run(*, device: torch.device, <option>=<default>, ...) -> BenchResult`. Time with
   `miniplaces.bench.timing`, measure the baseline in the same run, put a `ratio` in each row and say in
   `BenchResult.baseline` what it is against. Write `table(result) -> str` (Markdown) and, if a plot
   helps, `figure(result) -> matplotlib.figure.Figure`. Print nothing: the command prints.
2. In `registry.py`, add one entry to `BENCHMARKS`:
   `Benchmark("gpu", "miniplaces.bench.gpu", "one-line description", (Option("size", 4096, "matrix side",
   quick=256, minimum=1), ...))`, one `Option` per keyword of `run` with the same default.

`miniplaces bench gpu` then exists, with `--size`, `--device`, `--threads`, `--quick` and `--out`, and
writes `bench/gpu.json` with the machine; tests/test_bench_cli.py runs it with `--quick` and
tests/test_bench.py checks that the entry's options match `run`'s keywords. A script under
`benchmarks/` is no longer needed.
"""
