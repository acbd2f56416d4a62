"""Take a trained model elsewhere: ONNX, TorchScript, or a `model.safetensors` + `config.json` folder.

Every format is written to its own folder, beside a `config.json` that describes the model (architecture,
arguments, class names, input size, the normalisation the model applies inside itself), so each folder is
self-describing. The safetensors folder is the layout the Hugging Face Hub and timm use; `load_exported`
(and through it `load_model_any`, used by `predict`) rebuilds the model from it.

Each export is checked before it is written: the exported model (ONNX through onnxruntime, TorchScript after
a save/load round trip, safetensors after loading it back into a fresh model) is run on the check inputs at
two batch sizes and compared with the PyTorch model; beyond `RTOL`/`ATOL` on the logits, nothing is
written and an `ExportError` says by how much it differed.

ONNX and TorchScript take float images in [0, 1], (B, 3, S, S) with S the training crop; the batch axis is
dynamic. The unfold convolution's autograd function cannot be traced into a saved graph (it is Python), so
for tracing each `UnfoldConv2d` is swapped, in a copy, for the same computation in plain tensor ops
(`F.unfold`, one matrix product, a reshape) sharing its weights.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import io
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from miniplaces.engine.checkpoint import (
    CheckpointError,
    build_model,
    describe_model,
    load_checkpoint,
    load_model,
)
from miniplaces.errors import MiniPlacesError
from miniplaces.layers.normalize import Normalize
from miniplaces.rundir import RunDir, atomic_write_bytes, atomic_write_json

FORMATS: tuple[str, ...] = ("onnx", "torchscript", "safetensors")
EXPORT_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt", "safetensors": "model.safetensors"}
INPUT_NAME, OUTPUT_NAME, BATCH_AXIS = "images", "logits", "batch"
# The exported logits must equal PyTorch's within |a - b| <= ATOL + RTOL·|b| (fp32, CPU). Kernels differ
# between runtimes (ONNX Runtime's convolutions and GEMMs sum in another order), so equality is not exact.
ATOL = 1e-4
RTOL = 1e-4
ONNX_OPSET = 17
# The batch the graph is traced with; the check runs other batch sizes, so a batch baked in would fail it.
TRACE_BATCH = 2
INSTALL_HINT = "pip install 'miniplaces[export]'"


class ExportError(MiniPlacesError):
    """An export cannot be written, checked or read back."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote and how closely the exported model matched PyTorch."""

    format: str
    folder: Path
    model_file: Path
    max_abs_diff: float
    batch_sizes: tuple[int, ...]


def _require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ExportError(f"this export needs the {module} package, which is not installed: {INSTALL_HINT}") from err


# --- the unfold convolution, traceable ---------------------------------------------------------------------


class TraceableUnfoldConv2d(nn.Module):
    """`UnfoldConv2d`'s convolution in plain tensor ops: unfold, one matrix product, reshape.

    It shares the parameters of the module it stands for. Unlike the autograd function it has no
    hand-written backward, no in-place writes into preallocated buffers and no loop over the batch,
    so a trace keeps the batch size dynamic and every op has an ONNX equivalent.
    """

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_out, _, kh, kw = self.weight.shape
        cols = F.unfold(x, (kh, kw), dilation=self.dilation, padding=self.padding, stride=self.stride)  # (N, K, L)
        out = self.weight.reshape(c_out, -1) @ cols  # (N, C_out, L)
        if self.bias is not None:
            out = out + self.bias.view(1, c_out, 1)
        h_out = (x.shape[2] + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        w_out = (x.shape[3] + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return out.reshape(x.shape[0], c_out, h_out, w_out)  # (N, C_out, H_out, W_out)


def traceable(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode whose `UnfoldConv2d` layers are `TraceableUnfoldConv2d` (same weights)."""
    from miniplaces.layers.unfold_conv import UnfoldConv2d

    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, UnfoldConv2d):
                setattr(module, child_name, TraceableUnfoldConv2d(child))
    return model


# --- config.json -------------------------------------------------------------------------------------------


def normalisation(model: nn.Module) -> dict[str, Any]:
    """The normalisation the model applies to its [0, 1] input: `(x - mean) / std` per channel, or none."""
    layer = getattr(model, "normalize", None)
    if not isinstance(layer, Normalize):
        layer = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if layer is None:
        return {"inside_model": False}
    # 7 significant digits: the float32 buffers, without float64 noise (0.485, not 0.48500001430511475)
    mean, std = ([float(f"{v:.7g}") for v in t.flatten().tolist()] for t in (layer.mean, layer.std))
    return {"inside_model": True, "mean": mean, "std": std}


def _without_weight_arguments(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop the arguments that fetch weights (the model card names them): an export brings its own."""
    from miniplaces.models import model_card

    try:
        fetching = model_card(name).weight_arguments
    except MiniPlacesError:
        fetching = ()  # an unknown model is refused where it is built, with the file named
    return {k: v for k, v in kwargs.items() if k not in fetching}


def export_config(model: nn.Module, categories: Sequence[str], image_size: int, fmt: str) -> dict[str, Any]:
    """The `config.json` written beside every export."""
    from miniplaces.data.transforms import resize_for

    spec = describe_model(model)
    # Arguments that fetch weights (resnet18's weights='imagenet') are dropped: the export brings its own.
    spec["kwargs"] = _without_weight_arguments(spec["name"], spec["kwargs"])
    num_classes = int(spec["kwargs"].get("num_classes", getattr(model, "num_classes", len(categories))))
    return {
        "library": "miniplaces",
        "format_version": EXPORT_FORMAT_VERSION,
        "format": fmt,
        "model_file": MODEL_FILES[fmt],
        "architecture": spec["name"],
        "model_args": spec["kwargs"],
        "num_classes": num_classes,
        "label_names": list(categories),
        # What the model takes: RGB floats in [0, 1], NCHW, the val transform's resize then centre crop.
        "input_size": [3, image_size, image_size],
        "input_range": [0.0, 1.0],
        "resize": resize_for(image_size),
        "normalization": normalisation(model),
        **({"input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "dynamic_axes": {INPUT_NAME: {"0": BATCH_AXIS}}}
           if fmt == "onnx" else {}),
    }


def _field(config: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path, what: str) -> Any:
    if key not in config:
        raise ExportError(f"{path}: key '{key}' is missing ({what}); re-export the model")
    value = config[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ExportError(f"{path}: key '{key}' is {value!r}, expected {what}; re-export the model")
    return value


def read_export_config(folder: Path | str) -> dict[str, Any]:
    """The checked `config.json` of an export folder; every problem is an `ExportError` naming file and key."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise ExportError(f"{Path(folder)} holds no {CONFIG_NAME}: it is not a miniplaces export folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ExportError(f"{path} is not valid JSON ({err}); re-export the model") from err
    if not isinstance(config, dict):
        raise ExportError(f"{path} holds a {type(config).__name__}, expected a JSON object; re-export the model")
    version = _field(config, "format_version", int, path, "an integer")
    if version != EXPORT_FORMAT_VERSION:
        raise ExportError(f"{path}: key 'format_version' is {version}, this miniplaces reads "
                          f"{EXPORT_FORMAT_VERSION}; use the miniplaces version that wrote it")
    fmt = _field(config, "format", str, path, f"one of {', '.join(FORMATS)}")
    if fmt not in FORMATS:
        raise ExportError(f"{path}: key 'format' is {fmt!r}, expected one of {', '.join(FORMATS)}")
    _field(config, "architecture", str, path, "a registered model name")
    _field(config, "model_args", dict, path, "an object of model arguments")
    labels = _field(config, "label_names", list, path, "a list of class names")
    if not all(isinstance(label, str) for label in labels):
        raise ExportError(f"{path}: key 'label_names' must hold strings only; re-export the model")
    size = _field(config, "input_size", list, path, "[3, S, S]")
    if len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size) or size[0] != 3 or size[1] != size[2]:
        raise ExportError(f"{path}: key 'input_size' is {size!r}, expected [3, S, S] with S > 0")
    return config


# --- writing -----------------------------------------------------------------------------------------------


def _compare(got: torch.Tensor, expected: torch.Tensor, what: str) -> float:
    """Largest |got - expected|; an `ExportError` when it is beyond the tolerance or shapes differ."""
    if got.shape != expected.shape:
        raise ExportError(f"{what} gives logits of shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    diff = (got - expected).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    if not math.isfinite(worst) or bool((diff > ATOL + RTOL * expected.abs()).any()):
        raise ExportError(f"{what} differs from PyTorch by up to {worst:.3g} on the logits "
                          f"(tolerance {ATOL:g} + {RTOL:g}·|logit|); nothing was written")
    return worst


def _check_batches(inputs: torch.Tensor) -> list[torch.Tensor]:
    """The check inputs as batches of sizes other than the traced one: one image, then all of them."""
    batches = [inputs[:1]]
    if len(inputs) > 1:
        batches.append(inputs)
    return batches


def _check(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, inputs: torch.Tensor, what: str) -> float:
    """The largest difference between `run` and `model` over the check batches (see `_compare`)."""
    return max(_compare(run(batch), model(batch), f"{what} (batch {len(batch)})") for batch in _check_batches(inputs))


def _export_onnx(model: nn.Module, example: torch.Tensor, inputs: torch.Tensor, name: str) -> tuple[bytes, float]:
    ort = _require("onnxruntime")
    _require("onnx")  # the TorchScript-based exporter serialises through it
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the torch.export one, which needs
        # onnxscript and specialises the unfold convolution's batch; this one works offline and keeps it dynamic.
        # Tracer warnings concern the image side, which the export fixes.
        warnings.simplefilter("ignore")
        # torch < 2.5 has only this exporter and no `dynamo` switch; later releases default to the other one.
        choice = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        try:
            torch.onnx.export(traceable(model), (example,), buffer, **choice, opset_version=ONNX_OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}})
        except Exception as err:  # noqa: BLE001  (any exporter failure is a refusal with its reason)
            raise ExportError(f"model {name!r} cannot be exported to ONNX: {type(err).__name__}: {err}") from err
    data = buffer.getvalue()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0])

    return data, _check(run, model, inputs, f"the ONNX export of {name!r}")


def _export_torchscript(model: nn.Module, example: torch.Tensor, inputs: torch.Tensor,
                        name: str) -> tuple[bytes, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings concern the image side, which the export fixes
        try:
            traced = torch.jit.trace(traceable(model), (example,), check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
        except Exception as err:  # noqa: BLE001  (any tracer failure is a refusal with its reason)
            raise ExportError(f"model {name!r} cannot be traced to TorchScript: {type(err).__name__}: {err}") from err
    data = buffer.getvalue()
    # Check what a user will load, not the in-memory trace.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream; it still loads
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return data, _check(loaded, model, inputs, f"the TorchScript export of {name!r}")


def _export_safetensors(model: nn.Module, inputs: torch.Tensor, name: str) -> tuple[bytes, float]:
    st = _require("safetensors.torch")
    # Contiguous copies: safetensors refuses views and tensors sharing storage.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    data = st.save(tensors, metadata={"format": "pt"})
    reloaded = build_model({"model": describe_model(model), "state_dict": st.load(data)}).eval()
    return data, _check(reloaded, model, inputs, f"the safetensors export of {name!r}")


def _refuse_other_format(folder: Path, fmt: str) -> None:
    """One folder, one export: its config.json describes one model file."""
    try:
        other = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        return  # no readable config.json: nothing to overwrite by mistake
    if other != fmt:
        raise ExportError(f"{folder} already holds the {other} export of a model ({folder / CONFIG_NAME}); "
                          f"write the {fmt} export to another folder")


@torch.no_grad()
def export_model(model: nn.Module, fmt: str, folder: Path | str, inputs: torch.Tensor,
                 categories: Sequence[str] = (), image_size: int | None = None) -> ExportResult:
    """Export `model` (made by `create_model`) to `folder` as `fmt`, after checking it against PyTorch.

    Args:
        fmt: one of `FORMATS`.
        folder: receives the model file (`MODEL_FILES[fmt]`) and `config.json`.
        inputs: (N, 3, S, S) float images in [0, 1] to compare the export with PyTorch on,
            at batch sizes 1 and N (the graph is traced at batch `TRACE_BATCH`).
        categories: class names, index order.
        image_size: the crop S the model takes; defaults to the side of `inputs`.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if inputs.dim() != 4 or inputs.shape[1] != 3 or len(inputs) == 0:
        raise ExportError(f"check inputs must be (N, 3, S, S) images, got shape {tuple(inputs.shape)}")
    folder = Path(folder)
    _refuse_other_format(folder, fmt)
    name = describe_model(model)["name"]
    image_size = image_size or int(inputs.shape[-1])
    model = model.cpu().eval()
    inputs = inputs.cpu().float()
    example = torch.rand(TRACE_BATCH, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    if fmt == "onnx":
        data, worst = _export_onnx(model, example, inputs, name)
    elif fmt == "torchscript":
        data, worst = _export_torchscript(model, example, inputs, name)
    else:
        data, worst = _export_safetensors(model, inputs, name)

    config = export_config(model, categories, image_size, fmt)
    config["check"] = {"max_abs_diff": worst, "atol": ATOL, "rtol": RTOL,
                       "batch_sizes": [len(b) for b in _check_batches(inputs)]}
    model_file = folder / MODEL_FILES[fmt]
    try:
        atomic_write_bytes(model_file, data)
        # config.json last: a folder that has one has a complete model file.
        atomic_write_json(folder / CONFIG_NAME, config)
    except OSError as err:
        raise ExportError(f"cannot write the export to {folder}: {err.strerror or err}; "
                          "choose a writable output folder") from err
    return ExportResult(fmt, folder, model_file, worst, tuple(config["check"]["batch_sizes"]))


# --- reading -----------------------------------------------------------------------------------------------


def _check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    """An `ExportError` naming the first mismatching tensors when `tensors` does not fit the model."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [f"{k} {tuple(tensors[k].shape)} (model {tuple(v.shape)})"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            problems.append(f"{label}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}")
    if problems:
        raise ExportError(f"{path} does not fit the model of {path.parent / CONFIG_NAME} ({'; '.join(problems)}); "
                          "the weights and config.json come from different exports")


def load_exported(folder: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A model rebuilt from a safetensors export folder, in eval mode on `device`, and a checkpoint-like dict.

    The dict has what `predict` reads from a checkpoint: `model`, `categories` and `config.image_size`.
    """
    folder = Path(folder)
    config = read_export_config(folder)
    config_path = folder / CONFIG_NAME
    if config["format"] != "safetensors":
        raise ExportError(f"{folder} holds the {config['format']} export of a model ({config_path}); a model is "
                          "loaded back from the safetensors export or a checkpoint")
    st = _require("safetensors.torch")
    weights = folder / MODEL_FILES["safetensors"]
    if not weights.is_file():
        raise ExportError(f"{weights} does not exist; the export folder is incomplete, export it again")
    try:
        tensors = st.load_file(str(weights))
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error types for corrupt files)
        raise ExportError(f"cannot read {weights}: it is truncated or not a safetensors file ({err})") from err
    from miniplaces.models import create_model

    kwargs = _without_weight_arguments(config["architecture"], config["model_args"])
    try:
        model = create_model(config["architecture"], **kwargs)
    except MiniPlacesError as err:
        raise ExportError(f"{config_path}: keys 'architecture'/'model_args' do not build a model: {err}") from err
    classes = model.model_kwargs["num_classes"]
    if config["label_names"] and len(config["label_names"]) != classes:
        raise ExportError(f"{config_path}: key 'label_names' has {len(config['label_names'])} names for a model of "
                          f"{classes} classes; re-export the model")
    _check_tensors(tensors, model.state_dict(), weights)
    model.load_state_dict(tensors)
    size = config["input_size"][1]
    checkpoint = {"model": describe_model(model), "categories": config["label_names"],
                  "config": {"image_size": size}, "export": config}
    return model.to(device).eval(), checkpoint


def load_model_any(path: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A model from a checkpoint file or a safetensors export folder, in eval mode, and its description."""
    path = Path(path)
    if path.is_dir():
        return load_exported(path, device=device)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; give a checkpoint file or an export folder")
    return load_model(path, device=device)


# --- from a checkpoint -------------------------------------------------------------------------------------

CHECK_IMAGES = 8


def check_inputs(checkpoint: dict[str, Any], image_size: int, images: Sequence[Path | str] = (),
                 count: int = CHECK_IMAGES) -> tuple[torch.Tensor, str]:
    """Up to `count` images (N, 3, S, S) to compare an export with PyTorch on, and what they are.

    The given image files or folders; else the val split of the run's dataset (its config's `root`) when it
    is there; else seeded random pixels.
    """
    from miniplaces.data import MiniPlaces, load_rgb
    from miniplaces.engine.predict import eval_transform, image_files

    transform = eval_transform(image_size)
    if images:
        files = image_files(images)[:count]
        return torch.stack([transform(load_rgb(f)) for f in files]), f"{len(files)} given image(s)"
    root = (checkpoint.get("config") or {}).get("root")
    reason = "the checkpoint names no dataset"
    if isinstance(root, str) and root:
        try:
            dataset = MiniPlaces(root, "val", transform=transform)
            picked = [dataset[i][0] for i in range(min(count, len(dataset)))]
            if picked:
                return torch.stack(picked), f"{len(picked)} val images of {root}"
            reason = f"{root} has no val images"
        except (MiniPlacesError, OSError) as err:
            reason = f"its dataset is not readable ({err})"
    pixels = torch.rand(count, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    return pixels, f"{count} random images ({reason})"


def default_folder(checkpoint_path: Path | str, fmt: str) -> Path:
    """`<run>/export/<format>` for a checkpoint of a run (see `RunDir.export`)."""
    return RunDir.of_checkpoint(checkpoint_path).export(fmt)


def export_checkpoint(checkpoint_path: Path | str, fmt: str, folder: Path | str | None = None,
                      images: Sequence[Path | str] = ()) -> tuple[ExportResult, str]:
    """Export the model of a checkpoint (see `export_model`); returns the result and what it was checked on."""
    from miniplaces.engine.checkpoint import checkpoint_image_size

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    checkpoint = load_checkpoint(checkpoint_path)
    model = build_model(checkpoint).eval()
    image_size = checkpoint_image_size(checkpoint)
    inputs, described = check_inputs(checkpoint, image_size, images)
    folder = Path(folder) if folder is not None else default_folder(checkpoint_path, fmt)
    result = export_model(model, fmt, folder, inputs, checkpoint.get("categories") or [], image_size)
    return result, described
