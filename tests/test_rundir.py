"""The one atomic write: all or nothing, and stale temporary files are cleaned up."""

from __future__ import annotations

import json

import pytest

from miniplaces.rundir import atomic_write, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_tmp(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def broken(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_stale_tmp_from_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "last.pt"
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"x" * 100)
    other = tmp_path / ".best.pt.abc123.tmp"  # another target's temp file is not ours to remove
    other.write_bytes(b"y")
    atomic_write_text(target, "new")
    assert not stale.exists()
    assert other.exists()
