"""What every benchmark returns: its rows, the settings it ran with, its baseline and its machine.

A number without its machine cannot be compared with anything, so `Machine` is recorded by
every run: the CPU model and cores, the GPU (if any), torch's threads, the versions of torch,
torchvision and Python, and the date (UTC). `BenchResult.to_dict()` is the JSON the command writes.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "cpu model") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpu_count() -> int:
    # The cores this process may run on (a container or taskset may allow fewer than the machine has).
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _gpu_name(device: torch.device | None) -> str | None:
    if not torch.cuda.is_available():
        return None
    index = device.index if device is not None and device.type == "cuda" and device.index is not None \
        else torch.cuda.current_device()
    return torch.cuda.get_device_name(index)


def _torchvision_version() -> str:
    try:
        import torchvision
    except ImportError:  # torchvision is a dependency, but the record should not fail without it
        return "not installed"
    return str(torchvision.__version__)


@dataclass(frozen=True)
class Machine:
    """The machine and software a measurement was taken on."""

    cpu: str
    cpu_cores: int
    gpu: str | None
    torch_threads: int
    torch: str
    torchvision: str
    python: str
    platform: str
    date: str  # when the result was recorded (the end of the run): UTC, ISO 8601, to the second

    def describe(self) -> str:
        """One line for a table header."""
        threads = f"{self.torch_threads} torch thread" + ("s" if self.torch_threads != 1 else "")
        return (f"{self.cpu} ({self.cpu_cores} cores), GPU: {self.gpu or 'none'}, {threads}, "
                f"torch {self.torch}, torchvision {self.torchvision}, Python {self.python}, {self.date}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Machine:
        return cls(**data)


def this_machine(device: torch.device | str | None = None) -> Machine:
    """The `Machine` this process runs on now; `device` picks which GPU is named."""
    return Machine(
        cpu=_cpu_model(),
        cpu_cores=_cpu_count(),
        gpu=_gpu_name(torch.device(device) if device is not None else None),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        torchvision=_torchvision_version(),
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        date=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )


@dataclass
class BenchResult:
    """One run of one benchmark.

    Attributes:
        benchmark: the registered name (`conv`, `data`, …).
        settings: the options it ran with, the device included.
        baseline: what each row's `ratio` is measured against, in the same run.
        rows: the measurements, one dict per line of the table (the keys are the benchmark's own).
        machine: where it ran.
    """

    benchmark: str
    settings: dict[str, Any]
    baseline: str
    rows: list[dict[str, Any]]
    machine: Machine = field(default_factory=this_machine)

    def header(self) -> str:
        """Lines printed above the table: machine, settings, baseline."""
        settings = ", ".join(f"{key}={value}" for key, value in self.settings.items())
        return (f"{self.benchmark} on {self.machine.describe()}\n"
                f"settings: {settings}\nratios against: {self.baseline}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: benchmark, settings, baseline, machine, rows."""
        return {"benchmark": self.benchmark, "settings": _plain(self.settings), "baseline": self.baseline,
                "machine": asdict(self.machine), "rows": _plain(self.rows)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        return cls(benchmark=data["benchmark"], settings=data["settings"], baseline=data["baseline"],
                   rows=data["rows"], machine=Machine.from_dict(data["machine"]))


def _plain(value: Any) -> Any:
    """`value` with paths and devices as strings, so that it is JSON."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (Path, torch.device)):
        return str(value)
    return value

