"""The training engine: the loop (`loop`: the `Trainer`'s step and epoch), evaluation (`train`), its state
(`state`), resume policy (`resume`), checkpoints, optimiser, schedule, metrics, TensorBoard (`board`), device,
distributed helpers, loaders, and the pure prediction helpers. What a command does end to end (a run, an
evaluation to JSON, a challenge file) lives in `miniplaces.workflows`."""
