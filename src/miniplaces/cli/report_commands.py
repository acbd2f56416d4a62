"""`miniplaces report`: the study's results table, figures and HTML page from run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from miniplaces.cli.command import add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "report", run_report)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories (or folders of runs)")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder (default: report/)")
    parser.add_argument("--title", default="miniplaces report", help="title of the page and the Markdown table")


def run_report(args: argparse.Namespace) -> int:
    from miniplaces.report import build_report

    report = build_report(args.runs, args.out, title=args.title)
    for note in report.notes:
        print(f"note: {note}")
    print(report.table, end="")
    print(f"\n{len(report.runs)} run(s) → {report.out}/")
    for path in [report.markdown, report.csv, *report.figures]:
        print(f"  {path}")
    if report.grids:
        print(f"  {len(report.grids)} grid(s) under {report.out / 'grids'}/")
    print(f"open {report.html.resolve().as_uri()}")
    return 0
