"""Results tables, figures and the HTML report of one or many run directories."""

from miniplaces.report.build import Report, build_report
from miniplaces.report.runs import Run, RunError, find_run_dirs, load_run, load_runs
from miniplaces.report.tables import results_rows, to_markdown

__all__ = [
    "Report",
    "Run",
    "RunError",
    "build_report",
    "find_run_dirs",
    "load_run",
    "load_runs",
    "results_rows",
    "to_markdown",
]
