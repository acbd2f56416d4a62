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


# ---------------------------------------------------------------- precision


AMP_CHOICES = ("auto", "none", "bf16", "fp16")


def _cpu_feature(name: str) -> bool | None:
    """`torch.cpu._is_<name>_supported()` where this torch has it (2.4 and later), else None (cannot tell)."""
    probe = getattr(torch.cpu, f"_is_{name}_supported", None)
    if probe is None:
        return None
    try:
        return bool(probe())
    except RuntimeError:
        return None


def fast_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether `device` runs bfloat16 autocast faster than float32, and why (a short clause).

    CUDA: `torch.cuda.is_bf16_supported` without emulation (Ampere and later). CPU: torch's own probes
    of AMX tiles or AVX-512-BF16 instructions (no vendor names parsed here); a torch without the probes
    gets float32. MPS and other devices: float32.
    """
    if device.type == "cuda":
        try:
            supported = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.4 has no including_emulation
            supported = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return supported, f"CUDA device {name} {'supports' if supported else 'lacks native'} bf16"
    if device.type == "cpu":
        amx, avx512_bf16 = _cpu_feature("amx_tile"), _cpu_feature("avx512_bf16")
        if amx:
            return True, "the CPU has AMX tiles"
        if avx512_bf16:
            return True, "the CPU has AVX-512-BF16"
        if amx is None and avx512_bf16 is None:
            return False, f"torch {torch.__version__} cannot tell whether the CPU has AMX or AVX-512-BF16"
        return False, "the CPU has neither AMX nor AVX-512-BF16 (bf16 would be emulated, slower than float32)"
    return False, f"bf16 autocast is not known to be faster than float32 on {device.type}"


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """The precision `amp` stands for on `device` (`none`, `bf16` or `fp16`) and the reason, for the run's log.

    `auto` is `bf16` where `fast_bf16` says the device runs it fast, else `none` (float32); the other
    values stand for themselves.
    """
    if amp != "auto":
        return amp, "as configured"
    fast, why = fast_bf16(device)
    return ("bf16", f"auto: {why}") if fast else ("none", f"auto: float32, since {why}")
