"""Predictions of a trained model: top-k classes of image files, and the MiniPlaces challenge file.

Images go through the val transform (`load_rgb` + `val_transform`), so any size and mode
(grayscale, RGBA, palette, CMYK) is handled exactly as in evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from miniplaces.data import MiniPlaces, load_rgb, open_image_checked, val_transform
from miniplaces.data.layout import IMAGE_SUFFIXES
from miniplaces.data.transforms import CROP
from miniplaces.engine.loaders import resize_for
from miniplaces.errors import MiniPlacesError

CHALLENGE_TOP = 5

# The most pixels one image may decode to, or become once resized for the model: a 667-byte PNG may
# claim 200000×1 pixels, which the resize of the val transform would turn into billions.
MAX_IMAGE_PIXELS = 64_000_000


def check_image_pixels(path: Path | str, image_size: int = CROP, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Refuse an image whose decoded size, or its size once resized for `image_size`, exceeds `max_pixels`.

    Reads the header only (`open_image_checked`), so a decompression bomb costs nothing; an elongated
    image that passes the decoded-size check can still resize to too many pixels, which is checked too.
    """
    with open_image_checked(path, max_pixels=max_pixels, max_aspect=None) as image:
        width, height = image.size
    resized = resize_for(image_size) ** 2 * max(width, height) / min(width, height)  # the resize keeps the aspect
    if resized > max_pixels:
        raise MiniPlacesError(f"{path}: refused, a {width}×{height} image resizes to more than "
                              f"{max_pixels // 1_000_000} million pixels; give an ordinary photo")


@dataclass(frozen=True)
class Prediction:
    """The `top` most likely classes of one image, most likely first."""

    path: Path
    labels: list[int]
    names: list[str]
    probabilities: list[float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "image": str(self.path),
            "top": [
                {"label": label, "name": name, "probability": prob}
                for label, name, prob in zip(self.labels, self.names, self.probabilities, strict=True)
            ],
        }


def eval_transform(image_size: int = CROP) -> v2.Compose:
    """The val transform scaled to `image_size`: resize to 144/128 of it, centre crop."""
    return val_transform(image_size, resize_for(image_size))


def image_files(paths: Sequence[Path | str]) -> list[Path]:
    """Image files among `paths`; a folder stands for the images under it, sorted by name."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise MiniPlacesError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise MiniPlacesError(f"{path} does not exist; give image files or folders of images")
    return files


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.inference_mode()
def predict_images(
    model: nn.Module,
    paths: Sequence[Path],
    categories: Sequence[str] = (),
    top: int = 5,
    image_size: int = CROP,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> list[Prediction]:
    """The `top` classes of each image with softmax probabilities. `model` is in eval mode on `device`.

    `progress` is called after each batch with its number of images.
    """
    transform = eval_transform(image_size)
    predictions: list[Prediction] = []
    for chunk in _batches(list(paths), batch_size):
        for path in chunk:
            check_image_pixels(path, image_size)
        batch = torch.stack([transform(load_rgb(p)) for p in chunk]).to(device)  # (B, 3, S, S)
        probs = model(batch).float().softmax(dim=1)  # (B, K)
        values, labels = probs.topk(min(top, probs.shape[1]), dim=1)
        for path, vals, labs in zip(chunk, values.tolist(), labels.tolist(), strict=True):
            names = [categories[i] if i < len(categories) else str(i) for i in labs]
            predictions.append(Prediction(path, labs, names, vals))
        if progress is not None:
            progress(len(chunk))
    return predictions


@torch.inference_mode()
def challenge_lines(
    model: nn.Module,
    root: Path | str,
    image_size: int = CROP,
    batch_size: int = 128,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """`test/00000001.jpg l1 l2 l3 l4 l5` for every test image of `root`, sorted by name.

    `progress` is called after each batch with its number of images.
    """
    dataset = MiniPlaces(root, "test", transform=eval_transform(image_size))
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes < CHALLENGE_TOP:
        raise MiniPlacesError(
            f"the challenge file lists {CHALLENGE_TOP} labels per image; this model has only {num_classes} classes"
        )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    lines: list[str] = []
    for images, _ in loader:
        logits = model(images.to(device))  # (B, K)
        labels = logits.topk(CHALLENGE_TOP, dim=1).indices.tolist()
        for labs in labels:
            relpath = dataset.samples[len(lines)].relpath
            lines.append(f"{relpath} {' '.join(map(str, labs))}")
        if progress is not None:
            progress(len(labels))
    return sorted(lines)

