"""Measurements behind `benchmarks/*.py` and `miniplaces bench`: each module returns rows of results."""
