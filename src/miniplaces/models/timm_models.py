"""Any timm architecture as `timm/<name>` (optional: `pip install miniplaces[timm]`).

The registry resolves names with the `timm/` prefix here, lazily: timm is imported only when
such a model is asked for. The entry's card comes from the architecture itself, built once on
the meta device (no memory, no weights): a model with a patch embedding is a `vit` (AdamW,
built for the training side through timm's `img_size`), anything else a `cnn` (SGD) whose
Grad-CAM layer is its last feature stage (timm's `feature_info`). `pretrained=True` fetches
timm's weights; a checkpoint rebuilds the model without them (it holds its own).

The timm model is wrapped so that it takes images in [0, 1] like every model here and
normalises inside itself, with the mean and std of the architecture's pretrained config.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from miniplaces.errors import MiniPlacesError
from miniplaces.models.registry import ModelCard, ModelEntry, register_model_prefix

PREFIX = "timm/"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TimmClassifier(nn.Module):
    """A timm model behind a [0, 1] → normalised input; timm's surface (`forward_features`,
    `forward_head`, `reset_classifier`) passes through. The timm model is `self.model`."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(self.normalize(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)

    def reset_classifier(self, num_classes: int) -> None:
        self.model.reset_classifier(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise MiniPlacesError("timm models need the optional timm package: pip install 'miniplaces[timm]'") from None
    return timm


def _arch(name: str) -> str:
    arch = name.removeprefix(PREFIX)
    if not _timm().models.is_model(arch):
        raise MiniPlacesError(f"unknown timm model {arch!r} (model {name!r}); timm.list_models() lists them")
    return arch


def _build(arch: str, *, num_classes: int, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    timm = _timm()
    model = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kwargs)
    config = getattr(model, "pretrained_cfg", None) or {}
    return TimmClassifier(model, tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD)))


def _card(arch: str) -> ModelCard:
    """The card of a timm architecture, read from the model built on the meta device."""
    timm = _timm()
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False)
    except Exception:  # an architecture that computes with tensors while it is built: build it for real
        model = timm.create_model(arch, pretrained=False)
    if hasattr(model, "patch_embed"):
        return ModelCard(family="vit", size_argument="img_size", weight_arguments=("pretrained",))
    info = getattr(model, "feature_info", None)
    last = info[-1].get("module") if isinstance(info, list) and info else None
    return ModelCard(family="cnn", gradcam_layer=f"model.{last}" if last else None, weight_arguments=("pretrained",))


@functools.cache
def timm_entry(name: str) -> ModelEntry:
    """The registry entry of `timm/<arch>` (built once per name)."""
    arch = _arch(name)
    return ModelEntry(name, functools.partial(_build, arch),
                      f"timm {arch} (pretrained=True fetches timm's weights), new num_classes head", _card(arch))


register_model_prefix(PREFIX, timm_entry)
