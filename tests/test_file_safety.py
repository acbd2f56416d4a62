"""Files written and read safely (issue 20): a full disk during torch.save, a key given twice in YAML,
the umask's permissions on atomic writes, and metric sums on a device without float64 (MPS)."""

from __future__ import annotations

import errno
import math
import os
import random
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

import miniplaces.engine.checkpoint as checkpoint_module
from miniplaces.cli import main
from miniplaces.config import ConfigError, TrainConfig, load_config, save_config
from miniplaces.engine.checkpoint import describe_model, load_checkpoint, save_checkpoint
from miniplaces.engine.metrics import RunningSums
from miniplaces.fileio import RunWriteError, atomic_write_json, current_umask
from miniplaces.models import create_model
from miniplaces.report import figures

TORCH_THREADS = 1


def _payload() -> dict[str, Any]:
    model = create_model("simplenet", num_classes=3)
    return {"model": describe_model(model), "state_dict": model.state_dict(), "categories": ["a", "b", "c"]}


# ---------------------------------------------------------------- a full disk during torch.save


@pytest.mark.parametrize("raised", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4736 vs 4630"),
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
], ids=["torch-runtime-error", "enospc"])
def test_a_full_disk_in_torch_save_is_the_writers_clean_message(raised: BaseException, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "last.pt"
    good = save_checkpoint(_payload(), target).read_bytes()

    def full(obj: object, handle: Any) -> None:
        handle.write(b"PK\x03\x04 half a zip")
        raise raised

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    with pytest.raises(RunWriteError) as caught:
        save_checkpoint(_payload(), target)
    message = str(caught.value)
    assert message.startswith(f"cannot write {target}: ") and "choose a writable folder with free space" in message
    assert "enforce fail" not in message and "\n" not in message
    assert target.read_bytes() == good and sorted(tmp_path.iterdir()) == [target]  # the old file, no leftovers


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_a_really_full_disk_gives_no_space_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import miniplaces.fileio as fileio

    real_mkstemp = fileio.tempfile.mkstemp

    def on_full_disk(**kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(**kwargs)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)  # every write to the temporary file: ENOSPC
        os.close(full)
        return fd, name

    monkeypatch.setattr(fileio.tempfile, "mkstemp", on_full_disk)
    with pytest.raises(RunWriteError, match=f"cannot write {tmp_path / 'c.pt'}: No space left on device"):
        save_checkpoint({**_payload(), "big": torch.zeros(2_000_000)}, tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- YAML: a key given twice


def test_a_key_given_twice_in_a_config_file_is_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: simplenet\nlr: 0.1\nepochs: 3\nlr: 0.01\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4: key 'lr' is given twice \(first on line 2\); keep one"):
        load_config(path)
    path.write_text("model: vit\nmodel_kwargs:\n  depth: 6\n  heads: 4\n  depth: 8\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:5: key 'depth' is given twice \(first on line 3\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="key 'depth' appears twice"):
        load_config(None, ["model_kwargs={depth: 6, depth: 8}"])
    path.write_text("model: simplenet\nlr: 0.1\nmodel_kwargs: {}\n")  # the same keys once each still load
    assert load_config(path).lr == 0.1


def test_a_key_given_twice_is_one_cli_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\nepochs: 20\n")
    code = main(["train", "--config", str(path), "--root", str(tmp_path), "--set", f"out_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        f"error: {path}:2: key 'epochs' is given twice (first on line 1); keep one"]
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- permissions of atomic writes


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_keep_the_umasks_permissions(mask: int, mode: int, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    with _umask(mask):
        assert current_umask() == mask
        figure = plt.figure(figsize=(1, 1))
        written = [
            atomic_write_json(tmp_path / "eval.json", {"top1": 1.0}),
            save_checkpoint(_payload(), tmp_path / "checkpoints" / "last.pt"),
            save_config(TrainConfig(root="x"), tmp_path / "config.yaml"),
            figures._save(figure, tmp_path / "curves.png"),
        ]
        plt.close(figure)
        atomic_write_json(tmp_path / "eval.json", {"top1": 2.0})  # a rewrite too
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["categories"] == ["a", "b", "c"]


# ---------------------------------------------------------------- metric sums without float64


class _NoFloat64(TorchFunctionMode):
    """A stand-in for MPS: any float64 tensor is refused with the TypeError MPS raises."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if kwargs.get("dtype") == torch.float64:
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype (test stub)")
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.dtype == torch.float64:
            raise TypeError(f"Cannot convert a MPS Tensor to float64 dtype (test stub: {func})")
        return out


def test_running_sums_work_and_stay_exact_without_float64() -> None:
    rng = random.Random(4)
    batches = [(rng.uniform(0.5, 4.0), rng.randrange(0, 4097), rng.randrange(0, 4097)) for _ in range(4000)]
    with _NoFloat64():
        sums = RunningSums("cpu")
        for loss, top1, top5 in batches:
            sums.update(torch.tensor(loss), torch.tensor(top1), torch.tensor(top5), 4096)
        assert sums.values.dtype == torch.float32
        resumed = RunningSums("cpu")
        resumed.load_state(sums.state())
        averages = resumed.averages()
    count = 4096 * len(batches)
    exact_loss = math.fsum(float(torch.tensor(loss)) * 4096 for loss, _, _ in batches)  # the float32 losses
    # A plain float32 sum of these ~4e7 drifts by ~1e-6 (relative); Kahan's stays at float64's level.
    assert averages["loss"] * count == pytest.approx(exact_loss, rel=1e-9)
    assert averages["top1"] * count / 100 == pytest.approx(sum(b[1] for b in batches), abs=1e-3)
    assert resumed.count == count


def test_running_sums_keep_float64_where_the_device_has_it() -> None:
    sums = RunningSums("cpu")
    sums.update(torch.tensor(0.1), torch.tensor(3), torch.tensor(5), 10)
    assert sums.values.dtype == torch.float64 and sums.lost is None
    assert sums.state() == [torch.tensor(0.1).double().item() * 10, 3.0, 5.0, 10.0]
