"""Building blocks that know nothing of models."""

from miniplaces.layers.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Normalize"]
