"""Everything `miniplaces serve` asks of the library, in one place.

The server and the page only ever call the functions here; when the library's modules move
(workflows, model cards, attack specs), only the imports of this file change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from miniplaces.attacks.spec import AttackSpec
from miniplaces.data.dataset import DEFAULT_MAX_ASPECT, load_rgb
from miniplaces.data.layout import images_dir, read_categories, read_split
from miniplaces.data.transforms import resize_for
from miniplaces.engine.checkpoint import checkpoint_image_size
from miniplaces.engine.predict import eval_transform, image_files
from miniplaces.errors import MiniPlacesError
from miniplaces.explain.overlay import run_label
from miniplaces.explain.saliency import SALIENCY_METHODS, default_gradcam_layer, saliency
from miniplaces.models.io import load_model_any
from miniplaces.pixels import parse_eps

__all__ = [
    "ATTACKS",
    "MAX_ASPECT",
    "SALIENCY_METHODS",
    "ServedModel",
    "attack_image",
    "fit_to",
    "folder_images",
    "input_side",
    "load_rgb",
    "load_served_model",
    "overlay",
    "parse_eps",
    "saliency_heat",
    "shrink",
    "to_input",
    "top_k",
    "val_samples",
    "warm_up",
]

# The attacks the page offers: least-likely PGD, untargeted PGD, FGSM.
# The page's attack names → the attack modes of `AttackSpec`.
ATTACK_MODES: dict[str, str] = {"pgd-least-likely": "least-likely", "pgd-untargeted": "untargeted", "fgsm": "fgsm"}
ATTACKS: tuple[str, ...] = tuple(ATTACK_MODES)
# `predict`'s limit: a 200000×1 image passes any pixel cap, and becomes gigabytes once resized for a model.
MAX_ASPECT = DEFAULT_MAX_ASPECT


@dataclass(frozen=True)
class ServedModel:
    """A model the server holds: rebuilt from its checkpoint, in eval mode, on the CPU or a device."""

    key: str
    name: str
    checkpoint: Path
    model: nn.Module
    categories: list[str]
    image_size: int
    gradcam_layer: str | None

    def describe(self) -> dict[str, Any]:
        # The page names a model by its run (`fast`), not by the file every run has (`best.pt`).
        return {"key": self.key, "name": self.name, "checkpoint": run_label(self.checkpoint),
                "image_size": self.image_size, "classes": len(self.categories),
                "methods": [m for m in SALIENCY_METHODS if m != "gradcam" or self.gradcam_layer is not None]}


def load_served_model(path: Path | str, key: str, dataset_categories: Sequence[str] = (),
                      device: str | torch.device = "cpu") -> ServedModel:
    """Load a checkpoint for serving, with the class names of the dataset it is shown.

    Raises `MiniPlacesError` when `dataset_categories` (the dataset's class names, when one is
    browsed) differ from the checkpoint's, or from its number of outputs: the page would name
    the model's classes with the dataset's names.
    """
    model, checkpoint = load_model_any(path, device=device)
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    saved = list(checkpoint.get("categories") or [])
    dataset = list(dataset_categories)
    if dataset and num_classes and len(dataset) != num_classes:
        raise MiniPlacesError(f"checkpoint {path} predicts {num_classes} classes but the dataset has {len(dataset)}; "
                              "serve it with the dataset it was trained on")
    if dataset and saved and saved != dataset:
        first = next(i for i, (a, b) in enumerate(zip(saved, dataset, strict=False)) if a != b)
        raise MiniPlacesError(f"the dataset's class names differ from those checkpoint {path} was trained on "
                              f"(class {first} is {dataset[first]!r}, the checkpoint's is {saved[first]!r}); "
                              "serve it with the dataset it was trained on")
    categories = saved or dataset
    if num_classes and len(categories) != num_classes:
        categories = [str(i) for i in range(num_classes)]
    try:
        layer: str | None = default_gradcam_layer(model)
    except MiniPlacesError:
        layer = None  # a transformer has no convolutional map: the page offers vanilla and SmoothGrad only
    name = str(checkpoint["model"]["name"])
    return ServedModel(key, name, Path(path), model, categories, checkpoint_image_size(checkpoint), layer)


def val_samples(root: Path | str) -> tuple[list[tuple[Path, int]], list[str]]:
    """(image path, label) of every val image of a dataset folder, and its class names."""
    root = Path(root)
    base = images_dir(root)
    return [(base / s.relpath, int(s.label or 0)) for s in read_split(root, "val")], read_categories(root)


def folder_images(folder: Path | str) -> list[Path]:
    """The image files under a folder, sorted by name."""
    return image_files([folder])


def to_input(image: Image.Image, served: ServedModel) -> torch.Tensor:
    """(1, 3, S, S) in [0, 1]: the val transform at the model's own size."""
    device = next(served.model.parameters()).device
    return eval_transform(served.image_size)(image).unsqueeze(0).to(device)


def input_side(served: ServedModel) -> int:
    """The short side the val transform resizes an image to for `served`, before its centre crop."""
    return resize_for(served.image_size)


def shrink(image: Image.Image, side: int) -> Image.Image:
    """`image` with its short side brought down to `side` as the val transform resizes it (unchanged if smaller)."""
    if min(image.size) <= side:
        return image
    # On the uint8 tensor, as `eval_transform` does: its own resize to `side` is then the identity.
    return TF.to_pil_image(TF.resize(TF.pil_to_tensor(image), side, antialias=True))


def fit_to(x: torch.Tensor, served: ServedModel) -> torch.Tensor:
    """`x` at `served`'s input size (bilinear): an image made for one model shown to another."""
    if x.shape[-1] == served.image_size and x.shape[-2] == served.image_size:
        return x
    return F.interpolate(x, size=(served.image_size, served.image_size), mode="bilinear",
                         align_corners=False, antialias=True).clamp(0, 1)


@torch.inference_mode()
def top_k(served: ServedModel, x: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
    """The k most likely classes of one image (1, 3, H, W): label, name, probability."""
    probs = served.model(fit_to(x, served)).float().softmax(dim=1)[0]  # (K,)
    values, labels = probs.topk(min(k, probs.numel()))
    return [{"label": int(label), "name": served.categories[label], "probability": float(value)}
            for value, label in zip(values.tolist(), labels.tolist(), strict=True)]


def saliency_heat(served: ServedModel, x: torch.Tensor, method: str, target: int | None,
                  samples: int = 16) -> tuple[torch.Tensor, int]:
    """A (1, H, W) map in [0, 1] (robustly scaled) explaining class `target` (default: the predicted one)."""
    if method == "gradcam" and served.gradcam_layer is None:
        raise MiniPlacesError(f"Grad-CAM needs a convolutional feature map and {served.name} has none; "
                              "use vanilla or SmoothGrad")
    if target is not None and not 0 <= target < len(served.categories):
        raise MiniPlacesError(f"class {target} is out of range 0..{len(served.categories) - 1}")
    if target is None:
        with torch.inference_mode():
            target = int(served.model(x).argmax(dim=1))
    labels = torch.tensor([target], device=x.device)
    heat = saliency(served.model, x, labels, method=method, layer=served.gradcam_layer, samples=samples)
    from miniplaces.explain.overlay import robust_scale  # matplotlib: imported by `warm_up`, off the start-up path

    return robust_scale(heat)[0], target  # (1, H, W)


def overlay(x: torch.Tensor, heat: torch.Tensor) -> np.ndarray:
    """The heat map blended over the image: (H, W, 3) floats in [0, 1]."""
    from miniplaces.explain.overlay import overlay_heatmap

    return overlay_heatmap(x[0].cpu(), heat.cpu())


def warm_up(models: Sequence[ServedModel]) -> None:
    """Import the plotting code and run each model once, so that the first request is not the slow one."""
    import miniplaces.explain.overlay  # noqa: F401 (matplotlib, ~0.5 s)

    for served in models:
        top_k(served, torch.zeros(1, 3, served.image_size, served.image_size,
                                  device=next(served.model.parameters()).device))


def attack_image(served: ServedModel, x: torch.Tensor, attack: str, eps: float, steps: int,
                 label: int | None) -> torch.Tensor:
    """The adversarial version of one image (1, 3, H, W) against `served`, within ‖δ‖∞ ≤ eps.

    Untargeted PGD and FGSM move away from `label`, the true class, or the predicted one when
    the image has no label (an upload).
    """
    if attack not in ATTACKS:
        raise MiniPlacesError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    spec = AttackSpec.from_mode(ATTACK_MODES[attack], eps=eps, steps=steps)
    if label is None or not 0 <= label < len(served.categories):
        with torch.inference_mode():
            label = int(served.model(x).argmax(dim=1))
    x_adv, _ = spec.perturb(served.model, x, torch.tensor([label], device=x.device))
    return x_adv
