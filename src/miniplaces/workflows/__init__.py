"""What a command does end to end: train a run, evaluate it, predict, analyse, demo.

The CLI parses arguments and calls these; they call the library layers (data, models, engine,
attacks, explain, report) and write the run folder through `miniplaces.rundir` and
`miniplaces.records`. Nothing below this package imports it.
"""
