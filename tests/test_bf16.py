"""bf16 on the CPU: `amp: auto` resolution (detection mocked both ways), tiny bf16 runs that learn on both
loaders with EMA and progressive resizing, and per-sample batches made at the side trained."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from tiny_runs import config, rows, tiny_dataset

from miniplaces.data import MiniPlaces, resize_for, train_transform
from miniplaces.engine import device as device_module
from miniplaces.engine.device import fast_bf16, resolve_amp
from miniplaces.engine.distributed import DistInfo
from miniplaces.engine.loaders import build_train_batches
from miniplaces.engine.loaders import sample_seed as seed_of
from miniplaces.errors import MiniPlacesError
from miniplaces.workflows.train import train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("bf16_synth"))


def _cpu_probes(monkeypatch: pytest.MonkeyPatch, amx: bool | None, avx512_bf16: bool | None) -> None:
    """Replace torch's CPU probes; None removes the probe, as on a torch that lacks it."""
    for name, value in (("amx_tile", amx), ("avx512_bf16", avx512_bf16)):
        if value is None:
            monkeypatch.delattr(torch.cpu, f"_is_{name}_supported", raising=False)
        else:
            monkeypatch.setattr(torch.cpu, f"_is_{name}_supported", lambda v=value: v, raising=False)


@pytest.mark.parametrize(("amx", "avx512_bf16", "expected", "why"), [
    (True, False, "bf16", "AMX"),
    (False, True, "bf16", "AVX-512-BF16"),
    (False, False, "none", "neither AMX nor AVX-512-BF16"),
    (None, None, "none", "cannot tell"),
])
def test_auto_on_the_cpu_follows_torchs_probes(monkeypatch: pytest.MonkeyPatch, amx: bool | None,
                                               avx512_bf16: bool | None, expected: str, why: str) -> None:
    _cpu_probes(monkeypatch, amx, avx512_bf16)
    amp, reason = resolve_amp("auto", CPU)
    assert amp == expected and why in reason and reason.startswith("auto:")
    # an explicit precision stands for itself, whatever the CPU
    assert resolve_amp("none", CPU) == ("none", "as configured")
    assert resolve_amp("bf16", CPU) == ("bf16", "as configured")


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_follows_is_bf16_supported(monkeypatch: pytest.MonkeyPatch, supported: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    fast, why = fast_bf16(torch.device("cuda", 0))
    assert fast is supported and "Test GPU" in why
    assert resolve_amp("auto", torch.device("cuda", 0))[0] == ("bf16" if supported else "none")
    assert resolve_amp("auto", torch.device("mps"))[0] == "none"


def test_probe_errors_count_as_cannot_tell(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> bool:
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", broken, raising=False)
    assert device_module.resolve_amp("auto", CPU)[0] == "none"


@pytest.mark.parametrize("loader", ["dataloader", "cache"])
def test_bf16_run_learns_on_both_loaders_with_ema_and_progressive_resizing(
        data: Path, tmp_path: Path, loader: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    _cpu_probes(monkeypatch, False, True)  # auto → bf16, whatever CPU runs the test
    caplog.set_level(logging.INFO, logger="miniplaces.workflows.train")
    run = train(config(data, tmp_path, epochs=4, amp="auto", loader=loader, ema=True, ema_decay=0.9,
                       progressive_start_size=16, limit_train_batches=6, limit_val_batches=1), progress=False)
    metrics = rows(run)
    losses = [r["train_loss"] for r in metrics]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.05
    assert metrics[-1]["val_loss_ema"] is not None
    # config.yaml holds the precision chosen and, as its first line, why; the first log line says the same
    text = (run / "config.yaml").read_text()
    assert yaml.safe_load(text)["amp"] == "bf16"
    assert text.splitlines()[0] == "# amp: bf16 (auto: the CPU has AVX-512-BF16)"
    first = next(r.getMessage() for r in caplog.records if r.name == "miniplaces.workflows.train")
    assert first == "precision: amp bf16 (auto: the CPU has AVX-512-BF16)"


def test_per_sample_loader_makes_batches_at_the_side_trained(data: Path, tmp_path: Path) -> None:
    cfg = config(data, tmp_path, batch_size=4)
    batches = build_train_batches(cfg, DistInfo(), CPU)
    x, y = next(iter(batches.position(0, 0, 16)))
    assert x.shape == (4, 3, 16, 16)
    # Pixel check: the first image is the training transform made at side 16 (not a resize of side 32),
    # under that sample's own seed.
    index = next(iter(batches.sampler))[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_of(cfg.seed, 0, index))
        image, label = MiniPlaces(cfg.root, "train")[index]
        expected = train_transform(16, resize_for(16))(image)
    assert y[0] == label
    torch.testing.assert_close(x[0], expected)
    assert next(iter(batches.position(0, 0)))[0].shape == (4, 3, 32, 32)  # None: image_size


def test_a_run_with_auto_resumes_with_auto(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The checkpoint holds what auto chose (bf16); resuming with `amp: auto` on the same machine chooses it again.
    _cpu_probes(monkeypatch, True, False)
    run = train(config(data, tmp_path, epochs=1, amp="auto", limit_train_batches=1, limit_val_batches=1),
                progress=False)
    train(config(data, tmp_path, epochs=2, amp="auto", limit_train_batches=1, limit_val_batches=1), resume=run,
          progress=False)
    assert [r["epoch"] for r in rows(run)] == [1, 2]
    assert (run / "config.yaml").read_text().startswith("# amp: bf16 (auto: the CPU has AMX tiles)\n")
    # where auto chooses otherwise, the resume is refused rather than silently changing precision
    _cpu_probes(monkeypatch, False, False)
    with pytest.raises(MiniPlacesError, match="amp 'bf16' → 'none'"):
        train(config(data, tmp_path, epochs=3, amp="auto", limit_train_batches=1, limit_val_batches=1), resume=run,
              progress=False)
