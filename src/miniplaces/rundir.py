"""The run folder: its paths and the one way its files are written.

Everything a run leaves on disk goes through `atomic_write`: a temporary file in the
target's folder, fsync, rename. A crash mid-write leaves the previous file intact, and a
temporary file left by a killed writer is removed by the next write of the same target.

This module imports only the standard library, so every layer (data, engine, report) may use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete the temporary files a killed `atomic_write(path, …)` left beside `path`."""
    removed = []
    if path.parent.is_dir():
        for leftover in path.parent.glob(f"{_tmp_prefix(path)}*.tmp"):
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(handle)` on a temporary file beside `path`, fsync it, then rename it to `path`.

    The folder is created if needed. On any failure the temporary file is removed and the
    previous `path` (if any) is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")
