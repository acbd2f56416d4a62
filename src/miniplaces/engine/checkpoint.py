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

import errno
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from miniplaces import schema
from miniplaces.errors import MiniPlacesError
from miniplaces.fileio import atomic_write

CHECKPOINT_FORMAT = 1


class CheckpointError(MiniPlacesError):
    """A checkpoint file is missing, truncated, foreign or from another format version."""


# The file is torch.save's zip, then this trailer: the SHA-256 of every byte before it. torch.load ignores
# bytes after the zip, so the file stays a plain torch file; a file without the trailer (written before it
# existed, or by torch.save directly) still loads, unchecked.
_TRAILER_TAG = b"\nminiplaces-sha256:"
_TRAILER_SIZE = len(_TRAILER_TAG) + 64 + 1
_CHUNK = 1 << 20


def _trailer(digest: str) -> bytes:
    return _TRAILER_TAG + digest.encode("ascii") + b"\n"


class _HashingWriter:
    """A write-only file for torch.save that hashes what passes through and keeps the disk's own error."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.digest = handle, hashlib.sha256()
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(payload: dict[str, Any], path: Path | str) -> Path:
    """Write `payload` to `path` atomically: a temporary file in the same folder, fsync, rename.

    A crash mid-write leaves the previous file intact. The file ends with the SHA-256 of its bytes,
    which `load_checkpoint` checks. A full disk is a `RunWriteError` naming `path`.
    """
    payload = {"format_version": CHECKPOINT_FORMAT, **payload}

    def write(handle: IO[bytes]) -> None:
        sink = _HashingWriter(handle)
        try:
            torch.save(payload, sink)
        except RuntimeError as err:
            # torch's zip writer reports a short write as "[enforce fail at inline_container.cc…]".
            if sink.error is not None:
                raise sink.error from err
            if "inline_container" in str(err) or "PytorchStreamWriter" in str(err):
                raise OSError(errno.ENOSPC, "the write stopped short (is the disk full?)") from err
            raise
        handle.write(_trailer(sink.digest.hexdigest()))

    return atomic_write(path, write)


def read_torch_file(path: Path | str, *, map_location: str | torch.device = "cpu", label: str = "checkpoint",
                    what: str = "miniplaces checkpoint", hint: str = "use a file written by `miniplaces train`",
                    require_zip: bool = True) -> Any:
    """The object a torch.save file holds, read with `weights_only=True`, its checksum checked when it has one.

    A file without a checksum must end as torch.save's zip files do, unless `require_zip` is False
    (weights files from elsewhere may be in torch's older format).

    Every file that cannot be read (missing, empty, cut short, flipped bytes, text, another format) is a
    `CheckpointError` naming it: `cannot read <label> PATH: it is not a <what> (<why>); <hint>`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{label} {path} does not exist")

    def refuse(reason: str, advice: str = hint) -> CheckpointError:
        return CheckpointError(f"cannot read {label} {path}: it is not a {what} ({reason}); {advice}")

    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            if size >= _TRAILER_SIZE:
                handle.seek(size - _TRAILER_SIZE)
                tail = handle.read(_TRAILER_SIZE)
            else:
                tail = b""
            if tail.startswith(_TRAILER_TAG):
                expected = tail[len(_TRAILER_TAG):-1]
                digest = hashlib.sha256()
                handle.seek(0)
                left = size - _TRAILER_SIZE
                while left > 0:
                    chunk = handle.read(min(_CHUNK, left))
                    if not chunk:
                        break
                    digest.update(chunk)
                    left -= len(chunk)
                if digest.hexdigest().encode("ascii") != expected or not tail.endswith(b"\n"):
                    raise refuse("checksum mismatch: the file is damaged",
                                 "use an undamaged copy, or delete it and train again")
            elif size == 0:
                raise refuse("the file is empty")
            elif require_zip and not _ends_with_zip_directory(path, size):
                raise refuse("not a file written by torch.save, or cut short: it has neither a checksum "
                             "nor the end of a torch zip file")
    except OSError as err:
        raise CheckpointError(f"cannot read {label} {path}: {err.strerror or err}") from err
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a damaged file can raise nearly anything from the unpickler
        # torch's weights-only refusal spans many lines about trusting the file: say what it means instead.
        reason = ("written by torch.save with objects other than tensors and plain values, or damaged"
                  if isinstance(err, pickle.UnpicklingError)
                  else f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}")
        raise refuse(reason) from err


def _ends_with_zip_directory(path: Path, size: int) -> bool:
    """Whether the file ends with a zip's end-of-central-directory record, as every torch.save file does."""
    if size < 22:
        return False
    with path.open("rb") as handle:
        handle.seek(size - 22)
        end = handle.read(22)
    return end[:4] == b"PK\x05\x06" and end[-2:] == b"\x00\x00"


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; every failure is a `CheckpointError` that names the file.

    Every command that opens a checkpoint comes through here (or `load_model`, which does).
    """
    path = Path(path)
    payload = read_torch_file(path, map_location=map_location)
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


@dataclass(frozen=True)
class _ModelArguments:
    """The builder arguments of a checkpoint's `model` entry that its readers rely on (others are the model's)."""

    num_classes: int | None = schema.key(None, expected="be an integer ≥ 1", minimum=1)


@dataclass(frozen=True)
class _ModelEntry:
    name: str = schema.key(check=bool)  # a problem here is said as one of `model` (no words of its own)
    kwargs: _ModelArguments = schema.key(factory=dict, expected="be a mapping of argument names")


@dataclass(frozen=True)
class _Structure:
    """The keys of a checkpoint every reader relies on, with their types and ranges; the words follow 'must'."""

    model: _ModelEntry = schema.key(expected="be a mapping with a model 'name'")
    state_dict: dict[str, torch.Tensor] = schema.key(expected="map parameter names to tensors")
    categories: list[str] | None = schema.key(None, expected="be a list of class names")
    epoch: int | None = schema.key(None, expected="be an integer ≥ 0", minimum=0)
    step_in_epoch: int | None = schema.key(None, expected="be an integer ≥ 0", minimum=0)
    config: dict[str, Any] | None = schema.key(None, expected="be a mapping")


def _structure_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with the keys every reader relies on (their types and ranges), or None."""
    _, problem = schema.check(_Structure, payload)
    if problem is None:
        return None
    must = f"be {problem.expected}" if problem.kind == "range" else problem.expected  # range words have no verb
    return f"key {problem.key!r} must {must}, got {_short(problem.value)}"


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

