"""MiniPlaces data: layout, dataset, transforms (plus synth, verify, download, cache, loader)."""

from miniplaces.data.dataset import UNLABELLED, ImageReadError, MiniPlaces, load_rgb, open_image_checked
from miniplaces.data.layout import LayoutError, Sample, read_categories, read_split
from miniplaces.data.transforms import resize_for, train_transform, val_transform

__all__ = [
    "UNLABELLED",
    "ImageReadError",
    "LayoutError",
    "MiniPlaces",
    "Sample",
    "load_rgb",
    "open_image_checked",
    "read_categories",
    "read_split",
    "resize_for",
    "train_transform",
    "val_transform",
]
