"""One place that turns a device name (`auto`, `cpu`, `cuda`, `cuda:1`, `mps`) into a `torch.device`.

The engine (`device` config key) and the analysis commands (`--device`) both use it, so
the same names work everywhere and a bad one gets the same clear error.
"""

from __future__ import annotations

import re

import torch

from miniplaces.errors import MiniPlacesError

DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"
_PATTERN = re.compile(r"(?P<type>cpu|cuda|mps)(?::(?P<index>\d+))?")


class DeviceError(MiniPlacesError):
    """A device name is unknown or names a device this machine does not have."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(name: str, local_rank: int = 0, *, source: str = "device") -> torch.device:
    """The device `name` stands for on this machine.

    Args:
        name: `auto` (CUDA, then MPS, then CPU), `cpu`, `cuda` (this process's GPU),
            `cuda:N` (that GPU), or `mps`.
        local_rank: the process's GPU among the node's under torchrun, used by `auto` and `cuda`.
        source: how the user gave the name, for the error message (`key 'device'`, `--device`).

    Raises:
        DeviceError: naming `source` and `name` when the name is unknown or the device absent.
    """
    text = name.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    match = _PATTERN.fullmatch(text)
    if match is None:
        raise DeviceError(f"{source} {name!r} is not a device name; use {DEVICE_NAMES}")
    kind, index = match["type"], None if match["index"] is None else int(match["index"])
    if kind == "cpu":
        if index not in (None, 0):
            raise DeviceError(f"{source} {name!r}: there is only one CPU device; use cpu")
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise DeviceError(f"{source} {name!r}: MPS is not available on this machine; use auto or cpu")
        if index not in (None, 0):
            raise DeviceError(f"{source} {name!r}: there is only one MPS device; use mps")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise DeviceError(f"{source} {name!r}: no CUDA device is available on this machine; use auto or cpu")
    count = torch.cuda.device_count()
    if index is None:
        return torch.device("cuda", local_rank % count)
    if index >= count:
        raise DeviceError(f"{source} {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on `device` (CUDA, MPS) to finish; nothing to wait for on the CPU.

    Timings and progress counts read after this call include the device's queued kernels.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
