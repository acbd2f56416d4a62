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


# A scene photo is never 100 times wider than high; a 200000×1 PNG of a few hundred bytes would
# otherwise pass the pixel cap and become gigabytes once its short side is resized to the model input.
DEFAULT_MAX_ASPECT = 100.0


class ImageReadError(MiniPlacesError):
    """An image file is missing, truncated, too large or not an image.

    Raised inside a `DataLoader` worker, it comes back to the main process as an
    `ImageReadError` again: torch re-creates the exception from one string, its
    "Caught … in DataLoader worker process N. Original Traceback …" text. The
    constructor keeps only the original message from that text, so the user sees one
    line naming the file rather than the worker's traceback.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(_original_message(type(self), message))


def _original_message(cls: type, message: str) -> str:
    """The message of `cls` inside torch's worker traceback text, or `message` itself."""
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    marker = f"{cls.__module__}.{cls.__qualname__}: "
    at = message.rfind(marker)
    return message[at + len(marker) :].strip() if at >= 0 else message


def open_image_checked(path: Path | str, max_pixels: int | None = None,
                       max_aspect: float | None = DEFAULT_MAX_ASPECT) -> Image.Image:
    """Open an image lazily and refuse it before decoding when it is too large or too elongated.

    Only the header is read: the width and height are checked against `max_pixels` (default
    Pillow's `Image.MAX_IMAGE_PIXELS`, read at each call) and `max_aspect` (long side / short
    side; None for no limit) before any pixel is decoded.
    Raises `ImageReadError` naming the file; the caller closes the returned image.
    """
    with warnings.catch_warnings():
        # Pillow warns between MAX_IMAGE_PIXELS and twice that; the checks below decide instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except FileNotFoundError as err:
            raise ImageReadError(f"{path}: file not found") from err
        except Image.DecompressionBombError as err:
            raise ImageReadError(f"{path}: refused, too many pixels to decode safely ({err})") from err
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageReadError(f"{path}: cannot decode image ({err}); replace or remove it") from err
    width, height = image.size
    if max_pixels is None:
        max_pixels = Image.MAX_IMAGE_PIXELS or width * height
    problem = None
    if width < 1 or height < 1:
        problem = "has no pixels"
    elif width * height > max_pixels:
        problem = f"has {width * height:,} pixels, more than the limit of {max_pixels:,}"
    elif max_aspect is not None and max(width, height) / min(width, height) > max_aspect:
        problem = f"is {max(width, height) / min(width, height):,.0f} times longer than wide, over {max_aspect:g}"
    if problem is not None:
        image.close()
        raise ImageReadError(f"{path}: refused before decoding: the image of {width}×{height} {problem}; "
                             f"replace or remove it")
    return image


def load_rgb(path: Path | str, max_pixels: int | None = None,
             max_aspect: float | None = DEFAULT_MAX_ASPECT) -> Image.Image:
    """Decode an image fully and convert it to RGB (grayscale, CMYK, palette, RGBA all become RGB).

    Images over `max_pixels` or `max_aspect` are refused before decoding (see `open_image_checked`).
    """
    with open_image_checked(path, max_pixels, max_aspect) as image:
        try:
            image.load()  # decode now, so a truncated file fails here and not later
            return image.convert("RGB")
        except Image.DecompressionBombError as err:  # an animated frame may be larger than the first
            raise ImageReadError(f"{path}: refused, too many pixels to decode safely ({err})") from err
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
