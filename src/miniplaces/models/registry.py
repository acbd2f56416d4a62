"""A registry of models by name, each with its card: `create_model("vit", num_classes=100, image_size=64)`.

A model's card (timm's `pretrained_cfg`, sized for this project) is the one place that says
what the rest of the project needs to know about it: its family, the input size it is built
for and which builder argument takes another, its optimiser and the optimiser's defaults,
the layer Grad-CAM reads, and the arguments that fetch weights. The config, the optimiser,
checkpoints and saliency read the card; nothing tests a model's name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from miniplaces.errors import MiniPlacesError

Family = Literal["cnn", "vit"]
OptimizerName = Literal["sgd", "adamw", "muon"]

# The study's optimiser of each family: SGD for CNNs, AdamW for vision transformers.
FAMILY_OPTIMIZERS: dict[str, OptimizerName] = {"cnn": "sgd", "vit": "adamw"}
# lr and weight decay of each optimiser when a card or the config does not say otherwise.
# Muon's lr and weight decay are those of its SGD part (norms, biases, head); its filters take `muon_lr`.
OPTIMIZER_DEFAULTS: dict[str, tuple[float, float]] = {"sgd": (0.1, 1e-4), "adamw": (0.01, 0.05), "muon": (0.1, 1e-4)}
DEFAULT_INPUT_SIZE = 128


@dataclass(frozen=True)
class ModelCard:
    """What the project knows about a registered model.

    Args:
        family: `cnn` or `vit`; picks the optimiser when the card does not name one.
        input_size: the image side the model is built for by default.
        size_argument: the builder argument that sets the image side (`img_size` for ViTs, whose
            position embedding and windows depend on it), or None when any size works unchanged.
        optimizer, lr, weight_decay: the training defaults; None → the family's optimiser and its defaults.
        gradcam_layer: the module Grad-CAM reads (the last convolutional block), None when the model has none.
        weight_arguments: builder arguments that fetch weights; a checkpoint rebuilds the model without them.
        data_init: the model has `init_from_data(images)`, which sets some of its initial weights from
            training images (the `data_init` config key calls it before the first step).
    """

    family: Family
    input_size: int = DEFAULT_INPUT_SIZE
    size_argument: str | None = None
    optimizer: OptimizerName | None = None
    lr: float | None = None
    weight_decay: float | None = None
    gradcam_layer: str | None = None
    weight_arguments: tuple[str, ...] = field(default_factory=tuple)
    data_init: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILY_OPTIMIZERS:
            raise ValueError(f"unknown model family {self.family!r}; known: {', '.join(FAMILY_OPTIMIZERS)}")
        optimizer = self.optimizer or FAMILY_OPTIMIZERS[self.family]
        lr, weight_decay = OPTIMIZER_DEFAULTS[optimizer]
        # Frozen: fill the family's defaults once, so every reader sees complete values.
        object.__setattr__(self, "optimizer", optimizer)
        object.__setattr__(self, "lr", lr if self.lr is None else self.lr)
        object.__setattr__(self, "weight_decay", weight_decay if self.weight_decay is None else self.weight_decay)

    def optimizer_defaults(self, optimizer: str | None = None) -> tuple[str, float, float]:
        """(optimizer, lr, weight decay): the card's, or another optimiser's own defaults when one is named."""
        if optimizer is None or optimizer == self.optimizer:
            return self.optimizer, self.lr, self.weight_decay  # type: ignore[return-value]
        lr, weight_decay = OPTIMIZER_DEFAULTS[optimizer]
        return optimizer, lr, weight_decay


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    card: ModelCard


_REGISTRY: dict[str, ModelEntry] = {}
# Families of names resolved on demand (e.g. `timm/<arch>`): prefix → resolver of the full name.
_PREFIXES: dict[str, Callable[[str], ModelEntry]] = {}


def register_model(name: str, description: str, card: ModelCard) -> Callable[[Callable[..., nn.Module]],
                                                                         Callable[..., nn.Module]]:
    """Register a builder `fn(*, num_classes, **kwargs) -> nn.Module` under `name`, with its card."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, description, card)
        return builder

    return decorator


def register_model_prefix(prefix: str, resolver: Callable[[str], ModelEntry]) -> None:
    """Resolve every name starting with `prefix` lazily with `resolver(name)` (which raises
    `MiniPlacesError` for a name it does not know); such names are not in `list_models()`."""
    if prefix in _PREFIXES:
        raise ValueError(f"model prefix {prefix!r} is registered twice")
    _PREFIXES[prefix] = resolver


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, resolver in _PREFIXES.items():
        if name.startswith(prefix):
            return resolver(name)
    prefixes = "".join(f", {p}<name>" for p in _PREFIXES)
    raise MiniPlacesError(f"unknown model {name!r}; known models: {', '.join(list_models())}{prefixes}")


def model_card(name: str) -> ModelCard:
    """The card of a registered model; an unknown name is a `MiniPlacesError` listing the known ones."""
    return model_entry(name).card


def model_image_size(name: str, kwargs: dict[str, Any]) -> int:
    """The image side a model built with `kwargs` expects: its size argument if given, else the card's."""
    card = model_card(name)
    size = kwargs.get(card.size_argument) if card.size_argument else None
    return int(size) if isinstance(size, int) and size > 0 else card.input_size


def create_model(name: str, num_classes: int = 100, *, image_size: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model. The name and arguments are kept on the model
    (`model.model_name`, `model.model_kwargs`) so a checkpoint can rebuild it.

    Args:
        image_size: the training image side; passed to the builder's size argument (see `ModelCard`),
            so a ViT's position embedding and windows are made for it. Ignored by models of any size.
    """
    entry = model_entry(name)
    size_argument = entry.card.size_argument
    if image_size is not None and size_argument is not None:
        given = kwargs.get(size_argument)
        if given is not None and given != image_size:
            raise MiniPlacesError(f"model {name!r}: {size_argument}={given!r} in its arguments but image size "
                                  f"{image_size}; set only the image size")
        kwargs[size_argument] = image_size
    try:
        model = entry.builder(num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as err:
        # Bad keyword arguments or hyper-parameters come from the user's config: say which model.
        raise MiniPlacesError(f"model {name!r}: {err}") from err
    model.model_name = name
    # Paths become strings: a checkpoint holding a Path would not load with weights_only=True.
    kwargs = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in kwargs.items()}
    model.model_kwargs = dict(kwargs, num_classes=num_classes)
    return model
