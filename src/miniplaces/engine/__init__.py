"""The training engine: the loop (`train`), its state (`state`), checkpoints, optimiser, schedule, metrics,
device, distributed helpers, loaders, and the pure prediction helpers. What a command does end to end
(a run, an evaluation to JSON, a challenge file) lives in `miniplaces.workflows`."""
