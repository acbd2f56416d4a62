"""Self-describing checkpoints: written atomically, loaded with `weights_only=True`.

A checkpoint is a dict:

```
format_version  int, CHECKPOINT_FORMAT
model           {"name": str, "kwargs": dict}  enough to rebuild it with create_model
state_dict      the model's weights
ema             None, or {"state_dict", "updates"}: the EMA of the weights, which `build_model`
                loads instead of `state_dict` (they are the weights the run validated and chose best.pt by)
categories      class names, index order (may be empty)
...             what `miniplaces.engine.state.TrainState` adds: optimizer, scheduler,
                scaler, epoch, step, best_top1, rng, config
```
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from miniplaces.errors import MiniPlacesError
from miniplaces.rundir import atomic_write

CHECKPOINT_FORMAT = 1


class CheckpointError(MiniPlacesError):
    """A checkpoint file is missing, truncated, foreign or from another format version."""


def save_checkpoint(payload: dict[str, Any], path: Path | str) -> Path:
    """Write `payload` to `path` atomically: a temporary file in the same folder, fsync, rename.

    A crash mid-write leaves the previous file intact.
    """
    payload = {"format_version": CHECKPOINT_FORMAT, **payload}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; every failure is a `CheckpointError` that names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError) as err:
        # torch's weights-only refusal spans many lines about trusting the file: say what it means instead.
        reason = ("not written by torch.save, or it holds objects other than tensors and plain values"
                  if isinstance(err, pickle.UnpicklingError) else (str(err).strip().splitlines() or [repr(err)])[0])
        raise CheckpointError(
            f"cannot read checkpoint {path}: it is truncated, corrupt or not a miniplaces checkpoint ({reason})"
        ) from err
    if not isinstance(payload, dict) or "model" not in payload or "state_dict" not in payload:
        raise CheckpointError(
            f"{path} is not a miniplaces checkpoint (no model description); "
            "use a file written by `miniplaces train`"
        )
    version = payload.get("format_version")
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}, this miniplaces reads format {CHECKPOINT_FORMAT}; "
            "use the miniplaces version that wrote it"
        )
    problem = _structure_problem(payload)
    if problem is not None:
        raise CheckpointError(f"{path} is damaged or not a miniplaces checkpoint: {problem}; "
                              "use a file written by `miniplaces train`")
    return payload


def _structure_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with the keys every reader relies on (their types and ranges), or None."""
    spec = payload["model"]
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        return f"key 'model' must be a mapping with a model 'name', got {_short(spec)}"
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        return f"key 'model.kwargs' must be a mapping of argument names, got {_short(kwargs)}"
    classes = kwargs.get("num_classes")
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
        return f"key 'model.kwargs.num_classes' must be an integer ≥ 1, got {_short(classes)}"
    weights = payload["state_dict"]
    if not isinstance(weights, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        return f"key 'state_dict' must map parameter names to tensors, got {_short(weights)}"
    categories = payload.get("categories")
    if categories is not None and (not isinstance(categories, list)
                                   or not all(isinstance(c, str) for c in categories)):
        return f"key 'categories' must be a list of class names, got {_short(categories)}"
    for key in ("epoch", "step_in_epoch"):
        value = payload.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            return f"key {key!r} must be an integer ≥ 0, got {_short(value)}"
    if payload.get("config") is not None and not isinstance(payload["config"], dict):
        return f"key 'config' must be a mapping, got {_short(payload['config'])}"
    return None


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, torch.Tensor) else f"a tensor of shape {tuple(value.shape)}"
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:50]}…"


def describe_model(model: nn.Module) -> dict[str, Any]:
    """The `model` entry of a checkpoint, for a model made by `create_model`."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise ValueError("the model was not made by create_model; it has no model_name to save")
    return {"name": name, "kwargs": dict(getattr(model, "model_kwargs", {}))}


def build_model(checkpoint: dict[str, Any], *, ema: bool = True) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights: the EMA's when the run kept one
    (unless `ema=False`), else the trained weights."""
    from miniplaces.models import create_model, model_card

    spec = checkpoint["model"]
    # Arguments that fetch weights (the card names them) are dropped: the checkpoint has its own.
    fetching = model_card(spec["name"]).weight_arguments
    kwargs = {k: v for k, v in dict(spec.get("kwargs", {})).items() if k not in fetching}
    try:
        model = create_model(spec["name"], **kwargs)
    except (MiniPlacesError, TypeError, ValueError, RuntimeError) as err:  # arguments the model refuses
        raise CheckpointError(f"cannot rebuild model {spec['name']!r} from the checkpoint's key 'model.kwargs' "
                              f"{_short(kwargs)}: {err}") from err
    try:
        model.load_state_dict(weights_of(checkpoint, ema=ema))
    except RuntimeError as err:
        # torch lists every mismatch on its own line: the first, and how many there are, is one line.
        problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()] or [str(err)]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"weights do not fit model {spec['name']!r}: {problems[0]}{more}") from err
    return model


def weights_of(checkpoint: dict[str, Any], *, ema: bool = True) -> dict[str, Any]:
    """The state dict a checkpoint is used with: its EMA's when it has one and `ema`, else `state_dict`."""
    averaged = checkpoint.get("ema")
    if ema and isinstance(averaged, dict) and isinstance(averaged.get("state_dict"), dict):
        return averaged["state_dict"]
    return checkpoint["state_dict"]


def checkpoint_image_size(checkpoint: dict[str, Any]) -> int:
    """The image side the checkpoint's model was trained at: its config's `image_size`, else the side
    its model was built for (a ViT's `img_size`, else the model card's input size)."""
    from miniplaces.models import model_image_size

    config = checkpoint.get("config")
    size = config.get("image_size") if isinstance(config, dict) else None
    if isinstance(size, int) and size > 0:
        return size
    spec = checkpoint["model"]
    return model_image_size(spec["name"], dict(spec.get("kwargs", {})))


def load_model(path: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A model rebuilt from a checkpoint file alone, in eval mode on `device`, and the checkpoint."""
    checkpoint = load_checkpoint(path)
    try:
        model = build_model(checkpoint)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return model.to(device).eval(), checkpoint

