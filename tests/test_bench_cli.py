"""`miniplaces bench NAME` for every registered benchmark on tiny settings: table, JSON with the machine, PNG."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

import miniplaces.bench.data as bench_data
from miniplaces.bench.registry import BENCHMARKS
from miniplaces.bench.result import BenchResult
from miniplaces.cli import main
from miniplaces.data.transforms import resize_for

TORCH_THREADS = 1
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_runs_quick_and_records_its_machine(name: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    started = datetime.now(UTC).replace(microsecond=0)
    assert main(["bench", name, "--quick", "--device", "cpu", "--threads", "1", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / f"{name}.json").read_text())
    result = BenchResult.from_dict(document)
    assert result.benchmark == name and result.rows and result.baseline
    machine = document["machine"]
    assert machine["torch"] == torch.__version__ and machine["torch_threads"] == 1
    assert machine["cpu"] and machine["cpu_cores"] >= 1 and machine["python"] and machine["torchvision"]
    assert machine["gpu"] is None or isinstance(machine["gpu"], str)
    date = datetime.fromisoformat(machine["date"])
    assert date.tzinfo is not None and started <= date <= datetime.now(UTC) + timedelta(seconds=1)
    # The quick values reached the run, the device is recorded.
    for option in BENCHMARKS[name].options:
        if option.quick is not None and option.name in document["settings"]:
            quick = list(option.quick) if isinstance(option.quick, tuple) else option.quick
            assert document["settings"][option.name] == quick
    assert document["settings"]["device"] == "cpu"
    # Every row carries a ratio against the baseline measured in the same run.
    for row in document["rows"]:
        ratios = [value for key, value in row.items() if key.endswith("ratio") and value is not None]
        assert ratios and all(value > 0 for value in ratios)
    out = capsys.readouterr().out
    assert result.machine.describe() in out and f"wrote {tmp_path / f'{name}.json'}" in out
    png = tmp_path / f"{name}.png"
    assert not png.exists() or png.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_option_is_a_flag_with_its_default_in_the_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", name, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for option in BENCHMARKS[name].options:
        flag = "--" + option.name.replace("_", "-")
        assert flag in help_text and f"{option.help} (default: " in help_text
    assert "--quick" in help_text and "--threads" in help_text and "--device" in help_text


def test_bench_lists_every_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    assert all(f"    {name} " in out for name in BENCHMARKS)


def test_explicit_value_beats_quick(tmp_path: Path) -> None:
    assert main(["bench", "attack", "--quick", "--steps", "3", "--device", "cpu", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "attack.json").read_text())
    assert document["settings"]["steps"] == 3 and document["settings"]["batch_size"] == 2
    assert document["rows"][0]["name"] == "3 × forward+backward"


def test_conv_table_and_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "conv", "--batch-size", "2", "--image-size", "32", "--repeats", "1", "--device", "cpu",
                 "--no-simplenet", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "conv.json").read_text())["rows"]
    assert [r["layer"] for r in rows][-1] == "total" and len(rows) == 8
    table = capsys.readouterr().out
    for row in rows:
        assert f"| {row['layer']} |" in table and f"{row['cache_time_ratio']:.2f}" in table
    assert (tmp_path / "conv.png").read_bytes().startswith(PNG_MAGIC)


def _resize_sides(transform: v2.Transform) -> set[int]:
    """The sides of every `Resize` inside `transform` (through Compose and RandomChoice)."""
    if isinstance(transform, v2.Resize):
        return {transform.size[0]}
    return {side for inner in getattr(transform, "transforms", []) for side in _resize_sides(inner)}


@pytest.mark.parametrize("size", [32, 96, 128])
def test_per_sample_baseline_resizes_as_training_does(size: int) -> None:
    assert _resize_sides(bench_data.per_sample_transform(size)) == {resize_for(size)}


def test_bench_data_at_48_uses_resize_for_48(synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    built: list[v2.Transform] = []

    def spy(image_size: int) -> v2.Transform:
        built.append(transform := bench_data.train_transform(image_size, resize_for(image_size)))
        return transform

    monkeypatch.setattr(bench_data, "per_sample_transform", spy)
    root = shutil.copytree(synth_root, tmp_path / "synth")  # the cache is written beside the data
    args = ["bench", "data", "--root", str(root), "--batches", "2", "--batch-size", "8", "--workers", "0",
            "--image-size", "48", "--device", "cpu", "--out", str(tmp_path / "bench")]
    assert main(args) == 0
    assert [_resize_sides(transform) for transform in built] == [{54}]  # 48 × 144/128; not the study's 144
    document = json.loads((tmp_path / "bench" / "data.json").read_text())
    assert document["settings"]["per_sample_resize"] == 54 and "resize 54" in document["rows"][0]["loader"]
    assert document["rows"][0]["ratio"] == 1.0 and all(r["images"] == 16 for r in document["rows"])
    assert f"{document['rows'][1]['images_per_s']:.0f}" in capsys.readouterr().out


def test_bench_data_with_too_few_images_is_one_error_line(synth_root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "data", "--root", str(synth_root), "--batches", "50", "--batch-size", "8",
                 "--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 52 batches of 8 need 416 images") and str(synth_root) in err
    assert not (tmp_path / "data.json").exists()


def test_bad_options_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "train", "--quick", "--variants", "fp16", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "unknown training variant 'fp16'; choose among fp32" in capsys.readouterr().err
    assert main(["bench", "conv", "--batch-size", "0", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "batch_size is 0; it must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # the flag's type refuses it in argparse
        main(["bench", "attack", "--quick", "--threads", "-1", "--out", str(tmp_path)])
    assert refused.value.code == 2
    assert "argument --threads: must be ≥ 0, got -1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
