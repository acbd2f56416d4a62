"""A deterministic synthetic dataset in the official MiniPlaces layout.

Each class is a procedurally drawn "scene": a sky colour over a ground colour split at
a class-specific horizon, a ground texture (stripes at a class-specific frequency and
angle) and a class-specific shape in the sky. Images vary by jittered colours, horizon,
shape position and pixel noise, so a small CNN learns the classes in a few epochs while
the files go through the real loading code (JPEG files, label files, categories).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from miniplaces.errors import MiniPlacesError

MAX_IMAGE_SIZE = 1024  # as the decoded cache's bound

SHAPES = ("disc", "square", "triangle", "bar", "ring")


@dataclass(frozen=True)
class SceneStyle:
    sky: np.ndarray
    ground: np.ndarray
    horizon: float
    stripe_freq: float
    stripe_angle: float
    shape: str
    shape_color: np.ndarray


def class_names(num_classes: int) -> list[str]:
    """Category entries as in categories.txt: `/s/scene_000`, …"""
    return [f"/s/scene_{i:03d}" for i in range(num_classes)]


def _style(rng: np.random.Generator, index: int) -> SceneStyle:
    return SceneStyle(
        sky=rng.uniform(40, 230, 3),
        ground=rng.uniform(20, 200, 3),
        horizon=rng.uniform(0.3, 0.75),
        stripe_freq=rng.uniform(2, 14),
        stripe_angle=rng.uniform(0, np.pi),
        shape=SHAPES[index % len(SHAPES)],
        shape_color=rng.uniform(0, 255, 3),
    )


def draw_scene(style: SceneStyle, rng: np.random.Generator, size: int) -> np.ndarray:
    """One H×W×3 uint8 image of a class."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # (H, W) in [0, 1)
    horizon = style.horizon + rng.uniform(-0.06, 0.06)
    sky = np.clip(style.sky + rng.normal(0, 12, 3), 0, 255)
    ground = np.clip(style.ground + rng.normal(0, 12, 3), 0, 255)
    phase = rng.uniform(0, 2 * np.pi)
    along = xx * np.cos(style.stripe_angle) + yy * np.sin(style.stripe_angle)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * style.stripe_freq * along + phase)  # (H, W)
    is_sky = (yy < horizon)[..., None]
    image = np.where(is_sky, sky, ground * (0.6 + 0.4 * stripes[..., None]))
    # A sky gradient, so sky is not a flat colour.
    image = image * np.where(is_sky, 0.85 + 0.3 * yy[..., None], 1.0)

    cx, cy = rng.uniform(0.2, 0.8), rng.uniform(0.1, max(0.12, horizon - 0.05))
    r = rng.uniform(0.08, 0.16)
    dx, dy = xx - cx, yy - cy
    if style.shape == "disc":
        mask = dx**2 + dy**2 < r**2
    elif style.shape == "square":
        mask = (np.abs(dx) < r) & (np.abs(dy) < r)
    elif style.shape == "triangle":
        mask = (dy > -r) & (dy < r) & (np.abs(dx) < (r - dy) / 2)
    elif style.shape == "bar":
        mask = (np.abs(dx) < 2 * r) & (np.abs(dy) < r / 3)
    else:
        mask = np.abs(np.sqrt(dx**2 + dy**2) - r) < r / 4
    image[mask] = style.shape_color
    image = image + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def synthesize(
    root: Path | str,
    classes: int = 10,
    per_class: int = 50,
    val_per_class: int = 10,
    test_count: int = 0,
    image_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset under `root` and return `root`.

    The same arguments always give the same files (byte for byte).
    """
    if classes < 1 or per_class < 1 or val_per_class < 0 or test_count < 0:
        raise ValueError("classes and per_class must be ≥ 1; val_per_class and test_count ≥ 0")
    if not 1 <= image_size <= MAX_IMAGE_SIZE:
        # Each image is drawn in float64 arrays of image_size² elements: 100000 would need 149 GiB.
        raise MiniPlacesError(f"image size must be from 1 to {MAX_IMAGE_SIZE} pixels, got {image_size}")
    root = Path(root)
    images = root / "images"
    styles = [_style(np.random.default_rng([seed, 0, k]), k) for k in range(classes)]
    names = class_names(classes)
    root.mkdir(parents=True, exist_ok=True)
    (root / "categories.txt").write_text("".join(f"{n} {k}\n" for k, n in enumerate(names)))

    def save(array: np.ndarray, relpath: str) -> None:
        path = images / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, quality=90)

    train_lines = []
    for k, name in enumerate(names):
        rng = np.random.default_rng([seed, 1, k])
        for i in range(1, per_class + 1):
            relpath = f"train{name}/{i:08d}.jpg"
            save(draw_scene(styles[k], rng, image_size), relpath)
            train_lines.append(f"{relpath} {k}\n")
    (root / "train.txt").write_text("".join(train_lines))

    # Val images are numbered in a shuffled class order, as in the real val split.
    val_labels = np.random.default_rng([seed, 2]).permutation(np.repeat(np.arange(classes), val_per_class))
    rngs = [np.random.default_rng([seed, 3, k]) for k in range(classes)]
    val_lines = []
    for i, k in enumerate(val_labels.tolist(), 1):
        relpath = f"val/{i:08d}.jpg"
        save(draw_scene(styles[k], rngs[k], image_size), relpath)
        val_lines.append(f"{relpath} {k}\n")
    (root / "val.txt").write_text("".join(val_lines))

    test_rng = np.random.default_rng([seed, 4])
    for i in range(1, test_count + 1):
        k = int(test_rng.integers(classes))
        save(draw_scene(styles[k], test_rng, image_size), f"test/{i:08d}.jpg")
    return root
