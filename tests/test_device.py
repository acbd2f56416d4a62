"""Device names: `auto`, `cpu`, `cuda`, `cuda:N`, `mps`; clear errors naming the value and where it came from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from miniplaces.cli import main
from miniplaces.config import TrainConfig, load_config
from miniplaces.engine.device import DeviceError, resolve_device
from miniplaces.workflows.train import train


@pytest.fixture()
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this machine has two CUDA devices (resolving only builds `torch.device` objects)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture()
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_cpu_names(no_accelerator: None) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU:0") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_indices(two_gpus: None) -> None:
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # an explicit index wins
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)  # torchrun: this process's GPU
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"--device 'cuda:2': this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2", source="--device")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:-1", "tpu", "", "cuda:1:2"])
def test_unknown_names(name: str) -> None:
    with pytest.raises(DeviceError, match=f"key 'device' {name!r} is not a device name; use auto, cpu, cuda"):
        resolve_device(name, source="key 'device'")


def test_unavailable_devices(no_accelerator: None) -> None:
    with pytest.raises(DeviceError, match="'cuda:1': no CUDA device is available"):
        resolve_device("cuda:1")
    with pytest.raises(DeviceError, match="'mps': MPS is not available"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match="only one CPU"):
        resolve_device("cpu:1")


def test_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps") == resolve_device("mps")


def test_config_takes_indexed_devices_and_training_names_a_bad_one(synth_root: Path, tmp_path: Path,
                                                                   no_accelerator: None) -> None:
    assert load_config(None, ["device=cuda:1"]).device == "cuda:1"
    config = TrainConfig(root=str(synth_root), out_dir=str(tmp_path), device="cuda:1")
    with pytest.raises(DeviceError, match="key 'device' 'cuda:1': no CUDA device"):
        train(config, progress=False)
    assert not list(tmp_path.iterdir())  # nothing written


def test_commands_report_bad_devices(synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "missing.pt"  # the device is checked first
    for command in ("attack", "saliency"):
        assert main([command, "--checkpoint", str(checkpoint), "--root", str(synth_root), "--device", "gpu"]) == 2
        assert "error: --device 'gpu' is not a device name" in capsys.readouterr().err
