"""A new run from another run's weights (the key `init_from`): fine-tuning, as timm's `--initial-checkpoint`.

The run builds its model, optimiser, schedule and data from its own config; only the weights come from the
source checkpoint (its EMA's when it kept one, as `best.pt` is scored with). Every name and shape must match,
except the classifier's when the number of classes differs: that head is the new model's own, freshly built.
The source must be the same model with the same builder arguments; anything else is one error line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from miniplaces.config import ConfigError, TrainConfig
from miniplaces.data import read_categories
from miniplaces.engine.checkpoint import CheckpointError, load_checkpoint, weights_of
from miniplaces.models.io import resolve_model_path, without_weight_arguments

logger = logging.getLogger(__name__)


def run_model(config: TrainConfig) -> nn.Module:
    """The model a new run of `config` starts with, before any weights are loaded: its own builder arguments
    (without those that fetch weights when it starts from a checkpoint), one output per class of its data."""
    from miniplaces.models import create_model

    kwargs = dict(config.model_kwargs) if not config.init_from else without_weight_arguments(config.model,
                                                                                             config.model_kwargs)
    kwargs.setdefault("num_classes", len(read_categories(config.root)))
    return create_model(config.model, image_size=config.image_size, **kwargs)


def load_init_source(config: TrainConfig) -> tuple[Path, dict[str, Any]]:
    """The checkpoint `config.init_from` names (a file, or a run folder's `best.pt`), checked to hold
    `config.model` with weights that fit the run's model; read before the run writes anything."""
    path = resolve_model_path(config.init_from or "")
    if path.is_dir():
        raise ConfigError(f"key 'init_from': {path} is an export folder; give a checkpoint file or a run folder")
    checkpoint = load_checkpoint(path)
    source = checkpoint["model"]["name"]
    if source != config.model:
        raise ConfigError(f"key 'init_from': {path} holds a {source!r} model and this run trains {config.model!r}; "
                          f"start from a {config.model!r} checkpoint, or set model to {source!r}")
    _fit(run_model(config), path, checkpoint)  # on a model of its own: the run's is built after its seed
    return path, checkpoint


def init_weights(model: nn.Module, path: Path, checkpoint: dict[str, Any]) -> None:
    """Load the source's weights (`load_init_source`'s) into `model`, the run's, just built."""
    new_head = _fit(model, path, checkpoint)
    logger.info("initial weights from %s (epoch %s of its run)%s", path, checkpoint.get("epoch", "?"),
                f"; a new classifier for {getattr(model, 'num_classes', '?')} classes" if new_head else "")


def _fit(model: nn.Module, path: Path, checkpoint: dict[str, Any]) -> bool:
    """Load the checkpoint's weights into `model`; whether its classifier stayed new (the class counts
    differ). A body that does not fit (other builder arguments) is a `CheckpointError`."""
    weights = dict(weights_of(checkpoint))
    own = model.state_dict()
    prefix = f"{getattr(model, 'classifier_name', 'head')}."
    new_head = any(key.startswith(prefix) and key in own and own[key].shape != value.shape
                   for key, value in weights.items())
    if new_head:
        weights = {key: value for key, value in weights.items() if not key.startswith(prefix)}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shapes that differ, each on a line of its own
        problems = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise _misfit(path, (problems[1] if len(problems) > 1 else problems[0]).rstrip(".")) from err
    missing = [key for key in missing if not (new_head and key.startswith(prefix))]
    if missing or unexpected:
        raise _misfit(path, f"missing weights {missing[:3]}, unexpected weights {unexpected[:3]}")
    return new_head


def _misfit(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"key 'init_from': the weights of {path} do not fit this run's model (other "
                           f"model_kwargs than its source's?): {problem}; give the same model_kwargs")
