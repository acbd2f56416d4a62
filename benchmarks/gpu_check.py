"""The prepared GPU check of issue 10 §2: every CUDA path, each model's training rate, the study's projected time.

Usage (from a plain checkout, any torch ≥ 2.4, no install, no network, no dataset: it synthesises one):
    PYTHONPATH=src python3 benchmarks/gpu_check.py --out gpu_check.json          # one GPU, under 8 minutes
    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu --quick          # the same code paths, tiny
Prints one line per step as it finishes, then the tables; `--out` also writes everything as JSON.
A failing step is recorded as FAIL with its error and the check goes on; the exit status is 1 if any failed.
The implementation is `miniplaces.bench.gpu`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from miniplaces.bench.gpu import DEFAULT_BUDGET_S, format_report, run_gpu_check
from miniplaces.fileio import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny scale: checks the code paths, not the speed")
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"skip steps that would end after this many seconds (default {DEFAULT_BUDGET_S:g}, "
                             "120 with --quick)")
    parser.add_argument("--models", nargs="+", help="only these models (default: every registered one)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: this torch ({torch.__version__}) sees no CUDA device; "
              "use --device cpu --quick to check the code paths", file=sys.stderr)
        return 2
    result = run_gpu_check(args.device, quick=args.quick, budget_s=args.budget, models=args.models,
                           log=lambda line: print(line, flush=True))
    print()
    print(format_report(result), flush=True)
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")
    return 1 if result["counts"]["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
