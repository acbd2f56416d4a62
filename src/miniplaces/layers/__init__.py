"""Building blocks that know nothing of models."""

from miniplaces.layers.attention import Attention, window_partition, window_reverse
from miniplaces.layers.drop_path import DropPath, drop_path
from miniplaces.layers.mlp import Mlp
from miniplaces.layers.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize
from miniplaces.layers.patch_embed import PatchEmbed

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Attention",
    "DropPath",
    "Mlp",
    "Normalize",
    "PatchEmbed",
    "drop_path",
    "window_partition",
    "window_reverse",
]
