"""Predictions of a model (a checkpoint, a run folder or an export folder): the top classes of image files, and
the MiniPlaces challenge file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from miniplaces.data import MiniPlaces
from miniplaces.engine.checkpoint import checkpoint_image_size
from miniplaces.engine.device import resolve_device
from miniplaces.engine.predict import Prediction, challenge_lines, image_files, predict_images
from miniplaces.fileio import atomic_write_text
from miniplaces.models.io import load_model_any
from miniplaces.progress import StartProgress, no_progress


def write_challenge(lines: Sequence[str], out: Path | str) -> Path:
    """The submission file, one line per test image, written atomically."""
    return atomic_write_text(out, "".join(f"{line}\n" for line in lines))


def predict_challenge(checkpoint: Path | str, root: Path | str, out: Path | str, *, image_size: int | None = None,
                      batch_size: int = 128, workers: int = 0, device: str | torch.device = "auto",
                      progress: StartProgress | None = None) -> tuple[Path, int]:
    """Write the challenge file of `root`'s test split for `checkpoint`; return its path and line count.

    `image_size=None` takes the checkpoint's training image size. `progress` opens one task, "predict".
    """
    torch_device = resolve_device(device) if isinstance(device, str) else device
    model, payload = load_model_any(checkpoint, device=torch_device)
    with (progress or no_progress)("predict", len(MiniPlaces(root, "test"))) as advance:
        lines = challenge_lines(model, root, image_size=image_size or checkpoint_image_size(payload),
                                batch_size=batch_size, num_workers=workers, device=torch_device, progress=advance)
    return write_challenge(lines, out), len(lines)


def predict_files(checkpoint: Path | str, paths: Sequence[Path | str], *, top: int = 5, image_size: int | None = None,
                  batch_size: int = 128, device: str | torch.device = "auto",
                  progress: StartProgress | None = None) -> list[Prediction]:
    """The `top` classes of each image among `paths` (folders stand for the images under them).

    `progress` opens one task, "predict".
    """
    torch_device = resolve_device(device) if isinstance(device, str) else device
    model, payload = load_model_any(checkpoint, device=torch_device)
    files = image_files(paths)
    with (progress or no_progress)("predict", len(files)) as advance:
        return predict_images(model, files, payload.get("categories") or [], top=top,
                              image_size=image_size or checkpoint_image_size(payload), batch_size=batch_size,
                              device=torch_device, progress=advance)
