"""Building blocks that know nothing of models."""

from miniplaces.layers.attention import Attention, window_partition, window_reverse
from miniplaces.layers.drop_path import DropPath, drop_path
from miniplaces.layers.mlp import Mlp
from miniplaces.layers.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize
from miniplaces.layers.patch_embed import PatchEmbed
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
    "Attention",
    "DropPath",
    "Mlp",
    "Normalize",
    "PatchEmbed",
    "UnfoldConv2d",
    "UnfoldConv2dFunction",
    "UnfoldConvError",
    "drop_path",
    "unfold_conv2d",
    "unfold_conv2d_backward",
    "unfold_conv2d_forward",
    "window_partition",
    "window_reverse",
]
