"""resnet18 for fine-tuning: torchvision's network, normalisation in front, a 512→num_classes head.

`weights` chooses the starting point:

- None: torchvision's random initialisation;
- "imagenet": `ResNet18_Weights.IMAGENET1K_V1`, read from torch.hub's cache
  (`imagenet_cache_path()`), downloaded there by torch.hub when missing and online;
- a path: a file saved with `torch.save` holding a resnet18 state dict — torchvision's
  (its 1000-class head is dropped) or a miniplaces resnet18 checkpoint/state dict (its
  head is kept when it has `num_classes` outputs).

Files are read by `read_torch_file` (`torch.load(..., weights_only=True)`); anything else fails with a
`MiniPlacesError` that names the file and says what is wrong.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torchvision.models import ResNet, ResNet18_Weights
from torchvision.models.resnet import BasicBlock

from miniplaces.engine.checkpoint import read_torch_file
from miniplaces.errors import MiniPlacesError
from miniplaces.layers import Normalize
from miniplaces.models.base import Classifier
from miniplaces.models.registry import ModelCard, register_model

logger = logging.getLogger(__name__)

IMAGENET_WEIGHTS = ResNet18_Weights.IMAGENET1K_V1


def imagenet_cache_path() -> Path:
    """Where torch.hub keeps (and looks for) the ImageNet resnet18 weights."""
    filename = os.path.basename(urlparse(IMAGENET_WEIGHTS.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """A state dict from a file: a plain one, or the `state_dict` of a miniplaces checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise MiniPlacesError(f"weights file {path} does not exist; pass weights=PATH to an existing file, "
                              "weights='imagenet' or weights=None")
    obj = read_torch_file(path, label="weights file", what="state dict saved with torch.save(model.state_dict())",
                          hint="save one with torch.save(model.state_dict(), PATH)", require_zip=False)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a miniplaces checkpoint
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise MiniPlacesError(
            f"{path} is not a state dict (a dict of parameter names to tensors) but a {type(obj).__name__}; "
            "save one with torch.save(model.state_dict(), PATH)"
        )
    return obj


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights from torch.hub's cache, downloading them when missing (needs the network)."""
    cached = imagenet_cache_path()
    if cached.is_file():
        return read_state_dict(cached)
    # torchvision's file names carry the first hex digits of the file's SHA-256: check them.
    hash_prefix = cached.stem.rsplit("-", 1)[-1]
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(IMAGENET_WEIGHTS.url, str(cached), hash_prefix=hash_prefix, progress=False)
    except (URLError, OSError, RuntimeError) as err:
        raise MiniPlacesError(
            f"cannot download the ImageNet resnet18 weights ({err}). Offline? Copy {IMAGENET_WEIGHTS.url} "
            f"to {cached} (torch.hub's cache), or pass weights=PATH to a local state dict file"
        ) from err
    return read_state_dict(cached)


def _examples(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", …" if len(keys) > 3 else "")


class ResNet18(Classifier, ResNet):
    """torchvision's resnet18 (same module names, so its state dicts load) with `normalize` in front."""

    classifier_name = "fc"

    def __init__(self, num_classes: int = 100, weights: str | Path | None = None) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.num_classes = num_classes
        self.num_features = 512
        self.normalize = Normalize()
        if weights is not None:
            state = imagenet_state_dict() if weights == "imagenet" else read_state_dict(weights)
            self.load_backbone(state, source="the ImageNet weights" if weights == "imagenet" else str(weights))

    def load_backbone(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load a resnet18 state dict; its head too when it has this model's shape, else the head stays fresh."""
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("normalize.")}
        own = self.state_dict()
        body = {k for k in own if not k.startswith(("fc.", "normalize."))}
        missing = sorted(body - state.keys())
        unexpected = sorted(state.keys() - own.keys())
        mismatched = sorted(k for k in body & state.keys() if state[k].shape != own[k].shape)
        if missing or unexpected or mismatched:
            problems = [f"{label} {len(keys)} ({_examples(keys)})" for label, keys in
                        (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)) if keys]
            raise MiniPlacesError(f"{source} is not a resnet18 state dict: {'; '.join(problems)}; use torchvision's "
                                  "resnet18 weights or a miniplaces resnet18 checkpoint")
        if any(state.get(k) is None or state[k].shape != own[k].shape for k in ("fc.weight", "fc.bias")):
            logger.info("%s: head of another shape dropped; the %d-class head starts fresh", source, self.num_classes)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        result = self.load_state_dict(state, strict=False)
        assert not result.unexpected_keys and all(k.startswith(("fc.", "normalize.")) for k in result.missing_keys)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512, H/32, W/32)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return self.avgpool(features).flatten(1)  # (B, 512)


@register_model("resnet18", "torchvision resnet18 (weights='imagenet' | PATH | None), new 512→num_classes head",
                ModelCard(family="cnn", gradcam_layer="layer4", weight_arguments=("weights",)))
def resnet18(*, num_classes: int = 100, weights: str | Path | None = None, **kwargs: Any) -> ResNet18:
    return ResNet18(num_classes=num_classes, weights=weights, **kwargs)
