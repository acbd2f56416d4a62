"""Helpers for tests that damage a copy of a dataset (never the shared session fixture)."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_of(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


def edit_line(path: Path, index: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[index] = new
    path.write_text("\n".join(lines) + "\n")
