"""Building blocks that know nothing of models."""

from miniplaces.layers.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize
from miniplaces.layers.unfold_conv import (
    UnfoldConv2d,
    UnfoldConv2dFunction,
    UnfoldConvError,
    unfold_conv2d,
    unfold_conv2d_backward,
    unfold_conv2d_forward,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalize",
    "UnfoldConv2d",
    "UnfoldConv2dFunction",
    "UnfoldConvError",
    "unfold_conv2d",
    "unfold_conv2d_backward",
    "unfold_conv2d_forward",
]
