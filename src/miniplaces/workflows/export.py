"""Take a trained model elsewhere: ONNX, TorchScript, or a `model.safetensors` + `config.json` folder.

Every format is written to its own folder, beside a `config.json` that describes the model (architecture,
arguments, class names, input size, the normalisation the model applies inside itself), so each folder is
self-describing. The safetensors folder is the layout the Hugging Face Hub and timm use;
`miniplaces.models.io.load_exported` (and through it `load_model_any`, used by every command that runs a
model) rebuilds the model from it. A folder holds one export; a model file or `config.json` that this
package did not write is never replaced unless asked (`check_output_folder`).

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
import inspect
import io
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from miniplaces.engine.checkpoint import build_model, describe_model
from miniplaces.errors import MiniPlacesError
from miniplaces.fileio import atomic_write_bytes, atomic_write_json
from miniplaces.layers.normalize import Normalize
from miniplaces.models.io import (
    CONFIG_NAME,
    EXPORT_FORMAT_VERSION,
    FORMATS,
    LIBRARY,
    MODEL_FILES,
    ExportError,
    load_model_any,
    require,
    resolve_model_path,
    without_weight_arguments,
)
from miniplaces.rundir import RunDir

INPUT_NAME, OUTPUT_NAME, BATCH_AXIS = "images", "logits", "batch"
# The exported logits must equal PyTorch's within |a - b| <= ATOL + RTOL·|b| (fp32, CPU). Kernels differ
# between runtimes (ONNX Runtime's convolutions and GEMMs sum in another order), so equality is not exact.
ATOL = 1e-4
RTOL = 1e-4
ONNX_OPSET = 17
# The batch the graph is traced with; the check runs other batch sizes, so a batch baked in would fail it.
TRACE_BATCH = 2


class ForeignFolderError(ExportError):
    """The output folder holds files that no miniplaces export of this format wrote."""


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote and how closely the exported model matched PyTorch."""

    format: str
    folder: Path
    model_file: Path
    max_abs_diff: float
    batch_sizes: tuple[int, ...]


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


def export_config(model: nn.Module, categories: Sequence[str], image_size: int, fmt: str) -> dict[str, Any]:
    """The `config.json` written beside every export."""
    from miniplaces.data.transforms import resize_for

    spec = describe_model(model)
    # Arguments that fetch weights (resnet18's weights='imagenet') are dropped: the export brings its own.
    spec["kwargs"] = without_weight_arguments(spec["name"], spec["kwargs"])
    num_classes = int(spec["kwargs"].get("num_classes", getattr(model, "num_classes", len(categories))))
    return {
        "library": LIBRARY,
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
    ort = require("onnxruntime")
    require("onnx")  # the TorchScript-based exporter serialises through it
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
    st = require("safetensors.torch")
    # Contiguous copies: safetensors refuses views and tensors sharing storage.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    data = st.save(tensors, metadata={"format": "pt"})
    reloaded = build_model({"model": describe_model(model), "state_dict": st.load(data)}).eval()
    return data, _check(reloaded, model, inputs, f"the safetensors export of {name!r}")


def check_output_folder(folder: Path, fmt: str, *, overwrite: bool = False) -> None:
    """Refuse a folder this export would spoil: one folder holds one export, and what another program wrote is
    replaced only with `overwrite` (a `ForeignFolderError`). An export of `fmt` is replaced (a re-export)."""
    config_path, model_file = folder / CONFIG_NAME, folder / MODEL_FILES[fmt]
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            config = None
        ours = config if isinstance(config, dict) and config.get("library") == LIBRARY else None
        if ours is not None and ours.get("format") != fmt:
            raise ExportError(f"{folder} already holds the {ours.get('format')} export of a model ({config_path}); "
                              f"write the {fmt} export to another folder")
        if ours is None and not overwrite:
            what = "a JSON object of another program" if isinstance(config, dict) else "no miniplaces export config"
            raise ForeignFolderError(f"{config_path} is {what}: {folder} was not written by miniplaces export, "
                                     "and the export would replace it; choose another output folder")
    elif model_file.exists() and not overwrite:
        raise ForeignFolderError(f"{model_file} exists without a {CONFIG_NAME}: it was not written by miniplaces "
                                 "export, and the export would replace it; choose another output folder")


@torch.no_grad()
def export_model(model: nn.Module, fmt: str, folder: Path | str, inputs: torch.Tensor,
                 categories: Sequence[str] = (), image_size: int | None = None, *,
                 overwrite: bool = False) -> ExportResult:
    """Export `model` (made by `create_model`) to `folder` as `fmt`, after checking it against PyTorch.

    Args:
        fmt: one of `FORMATS`.
        folder: receives the model file (`MODEL_FILES[fmt]`) and `config.json`.
        inputs: (N, 3, S, S) float images in [0, 1] to compare the export with PyTorch on,
            at batch sizes 1 and N (the graph is traced at batch `TRACE_BATCH`).
        categories: class names, index order.
        image_size: the crop S the model takes; defaults to the side of `inputs`.
        overwrite: replace a model file or config.json that no miniplaces export wrote (see
            `check_output_folder`).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if inputs.dim() != 4 or inputs.shape[1] != 3 or len(inputs) == 0:
        raise ExportError(f"check inputs must be (N, 3, S, S) images, got shape {tuple(inputs.shape)}")
    folder = Path(folder)
    check_output_folder(folder, fmt, overwrite=overwrite)
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


def default_folder(source: Path | str, fmt: str) -> Path:
    """Where a format goes by default: `<run>/export/<format>` for a checkpoint of a run (see `RunDir.export`),
    the sibling `<format>` folder for an export folder (`<run>/export/safetensors` → `<run>/export/onnx`)."""
    source = Path(source)
    if source.is_dir():
        return source.resolve().parent / fmt
    return RunDir.of_checkpoint(source).export(fmt)


def export_checkpoint(checkpoint_path: Path | str, fmt: str, folder: Path | str | None = None,
                      images: Sequence[Path | str] = (), *, overwrite: bool = False) -> tuple[ExportResult, str]:
    """Export the model of a checkpoint, a run folder (its best.pt) or a safetensors export folder (see
    `export_model`); returns the result and what it was checked on."""
    from miniplaces.engine.checkpoint import checkpoint_image_size

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = resolve_model_path(checkpoint_path)
    folder = Path(folder) if folder is not None else default_folder(source, fmt)
    check_output_folder(folder, fmt, overwrite=overwrite)  # before the model is loaded: refusals come first
    model, checkpoint = load_model_any(source)
    image_size = checkpoint_image_size(checkpoint)
    inputs, described = check_inputs(checkpoint, image_size, images)
    result = export_model(model, fmt, folder, inputs, checkpoint.get("categories") or [], image_size,
                          overwrite=overwrite)
    return result, described
