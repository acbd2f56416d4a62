"""Models by name. Importing this package registers every model family."""

from miniplaces.models import msvit, resnet, simplenet, vit  # noqa: F401  (registers their models)
from miniplaces.models.registry import create_model, list_models, model_entry, register_model

__all__ = ["create_model", "list_models", "model_entry", "register_model"]
