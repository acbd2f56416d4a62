"""The training engine: the loop (`loop`: the `Trainer`'s step and epoch), evaluation (`train`), its state
(`state`), resume policy (`resume`), initial weights (`init_from`), checkpoints, optimiser, schedule, metrics, device,
distributed helpers, loaders, and the pure prediction helpers. What a command does end to end (a run, an
evaluation to JSON, a challenge file) lives in `miniplaces.workflows`."""
