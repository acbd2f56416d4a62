"""Atomic file writes: every file a run, a cache or a command leaves on disk is written here.

`atomic_write` writes a temporary file in the target's folder, fsyncs it and renames it over the target.
A crash mid-write leaves the previous file intact, and a temporary file left by a killed writer is removed
by the next write of the same target. The file gets the permissions `open` would give it (the umask's).

This module imports only the standard library (and the project's error base), so every layer may use it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from miniplaces.errors import MiniPlacesError


class RunWriteError(MiniPlacesError, OSError):
    """A file cannot be written: a read-only or full disk, or a folder that is a file. Still an `OSError`."""


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

    The folder is created if needed, and the file gets the permissions `open` would give it (0o666 less
    the umask). On any failure the temporary file is removed and the previous `path` (if any) is untouched.
    An `OSError` (full disk, no permission) becomes a `RunWriteError` that names `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(path)
        fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes the file 0600; give it what `open` would, so teammates can read a shared run.
            os.chmod(tmp_name, 0o666 & ~current_umask())
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as err:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, RunWriteError):
            raise _write_error(path, err) from err
        raise
    return path


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (another thread may be creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere the only way to read it is to set it and put it back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _write_error(path: Path, err: OSError) -> RunWriteError:
    reason = err.strerror or str(err)
    culprit = Path(err.filename) if err.filename else None  # e.g. a folder on the way that is a file
    shown = culprit is not None and culprit not in (path, path.parent) and culprit.parent != path.parent
    where = f" ({culprit})" if shown else ""
    return RunWriteError(f"cannot write {path}: {reason}{where}; choose a writable folder with free space")


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any, indent: int | None = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")
