"""The study's transforms, on `torchvision.transforms.v2`.

Both return float tensors in [0, 1] (C×H×W): normalisation belongs to the model.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2

from miniplaces.data.batch_augment import auto_augment_transform

RESIZE = 144
CROP = 128


def resize_for(image_size: int) -> int:
    """The side to resize to before cropping `image_size`: the study resizes to 144 to crop 128; same ratio."""
    return round(image_size * RESIZE / CROP)


def train_transform(image_size: int = CROP, resize: int = RESIZE, *, auto_augment: str = "none",
                    random_erasing: float = 0.0, crop_min_area: float = 0.25, rotation: float = 15.0,
                    color_jitter: float = 0.15) -> v2.Compose:
    """Resize with a random interpolation, flip, colour jitter (`color_jitter`), rotate (± `rotation`°), random
    resized crop (area `crop_min_area`–1); then optionally TrivialAugmentWide / RandAugment (`auto_augment`)
    and `v2.RandomErasing(p=random_erasing)`. The defaults are the study's."""
    extra = auto_augment_transform(auto_augment)
    random_resize = v2.RandomChoice(
        [
            v2.Resize(resize, interpolation=mode, antialias=True)
            for mode in (InterpolationMode.NEAREST, InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)
        ]
    )
    return v2.Compose(
        [
            v2.ToImage(),
            random_resize,
            v2.RandomHorizontalFlip(p=0.5),
            *([v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)]
              if color_jitter > 0 else []),
            *([v2.RandomRotation(rotation)] if rotation > 0 else []),
            v2.RandomResizedCrop(image_size, scale=(crop_min_area, 1.0), ratio=(0.8, 1.2), antialias=True),
            *([extra] if extra is not None else []),
            v2.ToDtype(torch.float32, scale=True),
            *([v2.RandomErasing(p=random_erasing)] if random_erasing > 0 else []),
        ]
    )


def val_transform(image_size: int = CROP, resize: int = RESIZE) -> v2.Compose:
    """Resize to 144 (bilinear), centre crop 128; any size or mode in, RGB float out."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, interpolation=InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
