"""Where a trained model comes from: a checkpoint file, a run folder, or an export folder.

Every command that runs a trained model (eval, predict, attack, saliency, export, serve) resolves what it was
given with `resolve_model_path` and loads it with `load_model_any`:

```
runs/<name>/                        a run folder: its checkpoints/best.pt
runs/<name>/checkpoints/last.pt     a checkpoint file (`miniplaces.engine.checkpoint`)
runs/<name>/export/safetensors/     an export folder: model.safetensors + config.json (`workflows.export`)
```

An export folder's `config.json` is checked as a config file is: every key read back is of the right type and
within the bounds the rest of the package allows, and the weights fit the model it describes (names, shapes,
dtypes) and are finite, before any of them reach a model.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from miniplaces import schema
from miniplaces.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from miniplaces.engine.checkpoint import CheckpointError, describe_model, load_model
from miniplaces.errors import MiniPlacesError
from miniplaces.rundir import RunDir

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "safetensors")
EXPORT_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
LIBRARY = "miniplaces"
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": "model.safetensors"}
# The most classes an export may describe: far above any scene dataset, far below a head that cannot be allocated.
MAX_CLASSES = 100_000
INSTALL_HINT = "pip install 'miniplaces[export]'"


class ExportError(MiniPlacesError):
    """An export cannot be written, checked or read back."""


def require(module: str) -> ModuleType:
    """Import an optional package of the `[export]` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ExportError(f"this export needs the {module} package, which is not installed: {INSTALL_HINT}") from err


def without_weight_arguments(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop the arguments that fetch weights (the model card names them): an export brings its own."""
    from miniplaces.models import model_card

    try:
        fetching = model_card(name).weight_arguments
    except MiniPlacesError:
        fetching = ()  # an unknown model is refused where it is built, with the file named
    return {k: v for k, v in kwargs.items() if k not in fetching}


# --- resolving what a command was given --------------------------------------------------------------------


def resolve_model_path(path: Path | str) -> Path:
    """The file or folder to load for `path`: a checkpoint file or an export folder as given, a run folder's
    `checkpoints/best.pt`. Anything else is a `CheckpointError` (a `MiniPlacesError`) saying what was found."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; give a checkpoint file, a run folder or an "
                              "export folder")
    if (path / CONFIG_NAME).is_file():
        return path
    run = RunDir(path)
    if run.best.is_file():
        return run.best
    if run.holds_training():
        found = sorted(p.name for p in run.checkpoints.glob("*.pt")) if run.checkpoints.is_dir() else []
        hint = (f"give one of its checkpoints ({', '.join(found)}) as a file" if found
                else "it has no checkpoint yet; wait for its first epoch to end")
        raise CheckpointError(f"run folder {path} has no {run.best.relative_to(path)}; {hint}")
    raise ExportError(f"{path} is neither a run folder nor an export folder: it holds no "
                      f"{run.best.relative_to(path)} and no {CONFIG_NAME}")


def load_model_any(path: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A model from a checkpoint file, a run folder (its best.pt) or a safetensors export folder, in eval mode on
    `device`, and its checkpoint (for an export folder, a checkpoint-like dict: see `load_exported`)."""
    resolved = resolve_model_path(path)
    if resolved.is_dir():
        return load_exported(resolved, device=device)
    try:
        return load_model(resolved, device=device)
    except CheckpointError:
        raise  # names the file already
    except MiniPlacesError as err:  # a model the checkpoint names but this version cannot build, say
        raise CheckpointError(f"{resolved}: {err}") from err


# --- an export folder's config.json ------------------------------------------------------------------------


@dataclass(frozen=True)
class _ExportKeys:
    """The keys of an export's `config.json` that are read back, with the words an error uses for each."""

    format_version: int = schema.key(expected="an integer")
    format: str = schema.key(expected=f"one of {', '.join(FORMATS)}")
    architecture: str = schema.key(expected="a registered model name")
    model_args: dict[str, Any] = schema.key(expected="an object of model arguments")
    num_classes: int = schema.key(expected="the number of classes", minimum=1, maximum=MAX_CLASSES)
    label_names: list[Any] = schema.key(expected="a list of class names")
    input_size: list[Any] = schema.key(expected="[3, S, S]")


def _field(config: dict[str, Any], key: str, path: Path, shown: str | None = None) -> Any:
    """Key `key` of `config`, checked as `_ExportKeys` declares it; `shown` is the key the error names."""
    value, problem = schema.check_key(_ExportKeys, key, config.get(key, schema.MISSING), shown=shown)
    if problem is None:
        return value
    if problem.missing:
        raise ExportError(f"{path}: key '{problem.key}' is missing ({problem.expected}); re-export the model")
    raise ExportError(f"{path}: key '{problem.key}' is {_short(problem.value)}, expected {problem.expected}; "
                      "re-export the model")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:50]}…"


def _finite_numbers(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def read_export_config(folder: Path | str) -> dict[str, Any]:
    """The checked `config.json` of an export folder; every problem is an `ExportError` naming file and key."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise ExportError(f"{Path(folder)} holds no {CONFIG_NAME}: it is not a miniplaces export folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ExportError(f"{path} is not valid JSON ({err}); re-export the model") from err
    except OSError as err:
        raise ExportError(f"cannot read {path}: {err.strerror or err}") from err
    if not isinstance(config, dict):
        raise ExportError(f"{path} holds a JSON {type(config).__name__}, expected an object: it is not a "
                          "miniplaces export folder")
    if config.get("library") != LIBRARY:
        raise ExportError(f"{path} was not written by miniplaces (key 'library' is {_short(config.get('library'))}, "
                          f"expected {LIBRARY!r}): it is not a miniplaces export folder")
    version = _field(config, "format_version", path)
    if version != EXPORT_FORMAT_VERSION:
        raise ExportError(f"{path}: key 'format_version' is {version}, this miniplaces reads {EXPORT_FORMAT_VERSION}; "
                          "use the miniplaces version that wrote it, or re-export the model")
    fmt = _field(config, "format", path)
    if fmt not in FORMATS:
        raise ExportError(f"{path}: key 'format' is {_short(fmt)}, expected one of {', '.join(FORMATS)}")
    if config.get("model_file", MODEL_FILES[fmt]) != MODEL_FILES[fmt]:
        raise ExportError(f"{path}: key 'model_file' is {_short(config['model_file'])}, expected "
                          f"{MODEL_FILES[fmt]!r} for the {fmt} format; re-export the model")
    _field(config, "architecture", path)
    args = _field(config, "model_args", path)
    classes = _field(config, "num_classes", path)
    if "num_classes" in args and _field(args, "num_classes", path, "model_args.num_classes") != classes:
        raise ExportError(f"{path}: key 'model_args.num_classes' is {args['num_classes']} but key 'num_classes' is "
                          f"{classes}; re-export the model")
    labels = _field(config, "label_names", path)
    if not all(isinstance(label, str) for label in labels):
        raise ExportError(f"{path}: key 'label_names' must hold strings only; re-export the model")
    if labels and len(labels) != classes:
        raise ExportError(f"{path}: key 'label_names' has {len(labels)} names for a model of {classes} classes; "
                          "re-export the model")
    size = _field(config, "input_size", path)
    if (len(size) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size) or size[0] != 3
            or size[1] != size[2] or not MIN_IMAGE_SIZE <= size[1] <= MAX_IMAGE_SIZE):
        raise ExportError(f"{path}: key 'input_size' is {_short(size)}, expected [3, S, S] with S from "
                          f"{MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}; re-export the model")
    norm = config.get("normalization", {"inside_model": False})
    if not isinstance(norm, dict) or not isinstance(norm.get("inside_model"), bool) or (norm["inside_model"] and not (
            _finite_numbers(norm.get("mean"), 3) and _finite_numbers(norm.get("std"), 3)
            and all(s > 0 for s in norm["std"]))):
        raise ExportError(f"{path}: key 'normalization' is {_short(norm)}, expected inside_model with 3 finite means "
                          "and 3 positive stds; re-export the model")
    return config


# --- an export folder's model ------------------------------------------------------------------------------


def _build(config: dict[str, Any], config_path: Path) -> nn.Module:
    """The model `config.json` describes, its class count checked against key 'num_classes'."""
    from miniplaces.models import create_model

    kwargs = without_weight_arguments(config["architecture"], config["model_args"])
    try:
        model = create_model(config["architecture"], **kwargs)
    except MiniPlacesError as err:
        raise ExportError(f"{config_path}: keys 'architecture'/'model_args' do not build a model: {err}") from err
    except (TypeError, ValueError, RuntimeError) as err:  # arguments the builder refuses
        raise ExportError(f"{config_path}: keys 'architecture'/'model_args' do not build a model: "
                          f"{type(err).__name__}: {err}") from err
    classes = int(model.model_kwargs["num_classes"])
    if classes != config["num_classes"]:
        raise ExportError(f"{config_path}: key 'num_classes' is {config['num_classes']} but 'architecture'/"
                          f"'model_args' build a model of {classes} classes; re-export the model")
    return model


def _planned_state(config: dict[str, Any], config_path: Path) -> dict[str, torch.Tensor] | None:
    """The state dict of the described model on the meta device (shapes and dtypes, no memory), or None where
    the model cannot be built without data (its weights are then checked against the real model only)."""
    try:
        with torch.device("meta"):
            return _build(config, config_path).state_dict()
    except Exception:  # noqa: BLE001  (initialisers that copy data fail on meta tensors; the real build says why)
        return None


def _check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    """An `ExportError` naming the first mismatching tensors when `tensors` does not fit the model."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} {tuple(tensors[k].shape)} (model {tuple(v.shape)})"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    dtypes = [f"{k} {tensors[k].dtype} (model {v.dtype})"
              for k, v in expected.items() if k in tensors and tensors[k].dtype != v.dtype]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong),
                        ("wrong dtype", dtypes)):
        if keys:
            problems.append(f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}")
    if problems:
        raise ExportError(f"{path} does not fit the model of {path.parent / CONFIG_NAME} ({'; '.join(problems)}); "
                          "the weights and config.json come from different exports")
    broken = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise ExportError(f"{path}: tensor {broken[0]} holds NaN or infinite values"
                          f"{f' (and {len(broken) - 1} more)' if len(broken) > 1 else ''}; re-export the model")


def load_exported(folder: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A model rebuilt from a safetensors export folder, in eval mode on `device`, and a checkpoint-like dict.

    The dict has what the commands read from a checkpoint: `model`, `categories`, `config.image_size`, and the
    export's `config.json` as `export`. Before the model is allocated, its shapes are built on the meta device
    and compared with the file's tensors, so a config that describes a huge model is refused cheaply.
    """
    folder = Path(folder)
    config = read_export_config(folder)
    config_path = folder / CONFIG_NAME
    if config["format"] != "safetensors":
        raise ExportError(f"{folder} holds the {config['format']} export of a model ({config_path}); a model is "
                          "loaded back from the safetensors export or a checkpoint")
    st = require("safetensors.torch")
    weights = folder / MODEL_FILES["safetensors"]
    if not weights.is_file():
        raise ExportError(f"{weights} does not exist; the export folder is incomplete, export it again")
    try:
        tensors = st.load_file(str(weights))
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error types for corrupt files)
        raise ExportError(f"cannot read {weights}: it is truncated or not a safetensors file ({err})") from err
    planned = _planned_state(config, config_path)
    if planned is not None:
        _check_tensors(tensors, planned, weights)
    model = _build(config, config_path)
    _check_tensors(tensors, model.state_dict(), weights)
    model.load_state_dict(tensors)
    checkpoint = {"model": describe_model(model), "categories": config["label_names"],
                  "config": {"image_size": config["input_size"][1]}, "export": config}
    return model.to(device).eval(), checkpoint
