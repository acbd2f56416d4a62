"""A registry of models by name: `create_model("simplenet", num_classes=100)`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from miniplaces.errors import MiniPlacesError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder `fn(*, num_classes, **kwargs) -> nn.Module` under `name`."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, description)
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise MiniPlacesError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 100, **kwargs: Any) -> nn.Module:
    """Build a registered model. The name and arguments are kept on the model
    (`model.model_name`, `model.model_kwargs`) so a checkpoint can rebuild it."""
    entry = model_entry(name)
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
