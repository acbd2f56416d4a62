"""`miniplaces study`: the seed study's five experiments, evaluated, attacked, explained and reported."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from miniplaces.cli.command import add_command, positive_int
from miniplaces.errors import MiniPlacesError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "study", run_study_command)
    parser.add_argument("--root", required=True, type=Path, help="dataset folder in the MiniPlaces layout")
    parser.add_argument("--out", type=Path, default=Path("study"), help="study folder (default: study/)")
    # No `choices`: the scales live in a data file, read (and the name checked) only when a study runs.
    parser.add_argument("--scale", default="full",
                        help="full (default: the seed's settings, for a GPU), cpu (real data at 64 px, 10 epochs "
                        "each, and the fast recipe, on a CPU), mini (the quick CPU check) or fast (the fast recipe "
                        "on the full data, for a GPU)")
    parser.add_argument("--resnet-weights", type=Path, metavar="PATH",
                        help="resnet18 ImageNet state dict (default: torch.hub's cache; without it resnet18 is "
                        "skipped, nothing is downloaded)")
    parser.add_argument("--experiments", metavar="A,B",
                        help="only these experiments (default: the scale's; full and mini: all five)")
    parser.add_argument("--configs", type=Path, metavar="DIR",
                        help="folder of the study's configs (default: ./configs when it holds them, else the "
                        "packaged presets)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: the scale's; mini: 1)")


def run_study_command(args: argparse.Namespace) -> int:
    from miniplaces.progress import duration_text, start_progress
    from miniplaces.workflows.study import StepOutcome, plan_study, run_study
    from miniplaces.workflows.train import TrainingInterrupted

    started = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    experiments = None
    if args.experiments is not None:
        experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
        if not experiments:
            raise MiniPlacesError(f"--experiments {args.experiments!r} names no experiment; give names such as "
                                  "simplenet,vit, or leave it out for the scale's")
    plan = plan_study(args.root, args.out, scale=args.scale, experiments=experiments, configs_dir=args.configs,
                      resnet_weights=args.resnet_weights, device=args.device, threads=args.threads)
    for experiment in plan.experiments:
        if experiment.skipped:
            print(f"{experiment.name}: {experiment.skipped}; include it with --resnet-weights PATH")

    def show(step: StepOutcome) -> None:
        if step.status == "skipped":
            print(f"{step.experiment} {step.step}: {step.detail}", flush=True)
            return
        detail = f" ({step.detail})" if step.detail else ""
        why = f" redo ({step.why}):" if step.why else ""
        took = "" if step.status == "done" else f" in {duration_text(step.seconds)}"
        print(f"{step.experiment} {step.step}:{why} {step.status}{detail}{took}", flush=True)

    try:
        outcome = run_study(plan, on_step=show, step_progress=start_progress)
    except TrainingInterrupted as err:
        print(f"interrupted; the run {err.run_dir} can continue from its last checkpoint: rerun the same "
              "`miniplaces study` command", file=sys.stderr)
        return 130
    report = outcome.report
    assert report is not None
    print()
    print(report.comparison, end="")
    if outcome.nothing_ran:
        print("\nevery step was already done; the report was rewritten")
    else:
        steps = ", ".join(f"{name} {duration_text(seconds)}" for name, seconds in outcome.seconds_by_step().items())
        print(f"\nstudy time: {duration_text(time.perf_counter() - started)} ({steps}; a resumed study counts "
              "this call only)")
    print(f"\nreport: {report.markdown} and {report.html}")
    return 0
