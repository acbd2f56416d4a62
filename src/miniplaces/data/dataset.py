"""`MiniPlaces`: a `torch.utils.data.Dataset` over one split of the official layout."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from miniplaces.data.layout import Sample, images_dir, read_categories, read_split
from miniplaces.errors import MiniPlacesError

UNLABELLED = -1


class ImageReadError(MiniPlacesError):
    """An image file is missing, truncated or not an image."""


def load_rgb(path: Path | str) -> Image.Image:
    """Decode an image fully and convert it to RGB (grayscale, CMYK, palette, RGBA all become RGB)."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise ImageReadError(f"{path}: file not found") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot decode image ({err}); replace or remove it") from err


class MiniPlaces(Dataset):
    """One split of MiniPlaces (or of a dataset in the same layout).

    Returns `(image, label)`: the image as a PIL RGB image, or whatever `transform`
    makes of it; the label an int (`-1` for the unlabelled test split).

    Args:
        root: the dataset folder (holding `images/`, `train.txt`, `val.txt`, `categories.txt`).
        split: `train`, `val` or `test`.
        transform: applied to the PIL image.
        skip_unreadable: instead of raising on an unreadable image, warn, count it in
            `self.skipped` and return the next readable sample of the split.
    """

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        skip_unreadable: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        self.classes: list[str] = read_categories(self.root) if (self.root / "categories.txt").exists() else []
        self.samples: list[Sample] = read_split(self.root, split)
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [UNLABELLED if s.label is None else s.label for s in self.samples]

    def path(self, index: int) -> Path:
        return images_dir(self.root) / self.samples[index].relpath

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            try:
                image = load_rgb(self.path(i))
            except ImageReadError as err:
                if not self.skip_unreadable:
                    raise
                if self.samples[i].relpath not in self.skipped:
                    self.skipped.add(self.samples[i].relpath)
                    warnings.warn(f"skipping unreadable image: {err}", stacklevel=2)
                continue
            label = self.samples[i].label
            if self.transform is not None:
                image = self.transform(image)
            return image, UNLABELLED if label is None else label
        raise ImageReadError(f"no readable image in the {self.split} split of {self.root}")
