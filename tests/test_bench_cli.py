"""`miniplaces bench conv` / `bench data` on tiny settings: table printed, JSON rows and a PNG written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from miniplaces.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_bench_conv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "conv", "--batch-size", "2", "--image-size", "32", "--repeats", "1", "--device", "cpu",
                 "--no-simplenet", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "conv.json").read_text())
    assert [r["layer"] for r in rows][-1] == "total" and len(rows) == 8
    table = capsys.readouterr().out
    for row in rows:
        assert f"| {row['layer']} |" in table and f"{row['cache_time_ratio']:.2f}" in table
    assert (tmp_path / "conv.png").read_bytes().startswith(PNG_MAGIC)


def test_bench_data(synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = shutil.copytree(synth_root, tmp_path / "synth")  # the cache is written beside the data
    args = ["bench", "data", "--root", str(root), "--batches", "2", "--batch-size", "8", "--workers", "0",
            "--image-size", "32", "--out", str(tmp_path / "bench")]
    assert main(args) == 0
    rows = json.loads((tmp_path / "bench" / "data.json").read_text())
    assert rows[0]["ratio"] == 1.0 and all(r["images"] == 16 for r in rows)
    assert f"{rows[1]['images_per_s']:.0f}" in capsys.readouterr().out
    assert (tmp_path / "bench" / "data.png").read_bytes().startswith(PNG_MAGIC)
    assert main([*args[:4], "--batches", "50", *args[6:]]) == 2
    assert "lower --batches" in capsys.readouterr().err
