"""miniplaces: train, dissect and attack scene classifiers on MIT MiniPlaces."""

__version__ = "0.1.0"
