"""Models by name, each with its card. Importing this package registers every model family."""

from miniplaces.models import fastnet, msvit, resnet, simplenet, timm_models, vit  # noqa: F401  (registers their models)
from miniplaces.models.registry import (
    ModelCard,
    create_model,
    list_models,
    model_card,
    model_entry,
    model_image_size,
    register_model,
)

__all__ = ["ModelCard", "create_model", "list_models", "model_card", "model_entry", "model_image_size",
           "register_model"]
