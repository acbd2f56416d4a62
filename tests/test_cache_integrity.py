"""The decoded cache is never trusted beyond what it can show: corrupt, truncated or
relabelled caches are refused or rebuilt, a full disk fails cleanly, sizes are bounded,
and `miniplaces cache --verify` catches images edited in place."""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from miniplaces.cli import main
from miniplaces.data import cache as cache_module
from miniplaces.data.cache import (
    MAX_IMAGE_SIZE,
    CacheError,
    build_cache,
    cache_paths,
    cache_state,
    open_cache,
    verify_cache,
)
from miniplaces.data.layout import images_dir, read_split


@pytest.fixture()
def data_copy(synth_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synth_root, tmp_path / "data"))


@pytest.fixture()
def built(data_copy: Path) -> Path:
    """`data_copy` with a current val cache of 32×32 under `<root>/cache`."""
    build_cache(data_copy, "val", image_size=32, workers=1)
    return data_copy


def _val_paths(root: Path) -> cache_module.CachePaths:
    return cache_paths(root, "val", 32)


# --- checked at every open ---------------------------------------------------------------------

def test_overwritten_pixels_are_refused_with_the_rebuild(built: Path) -> None:
    pixels = np.load(_val_paths(built).images, mmap_mode="r+")
    pixels[5] = 255 - pixels[5]
    pixels.flush()
    del pixels
    assert cache_state(built, "val", 32) == "corrupt"
    with pytest.raises(CacheError, match=r"corrupt: .*sampled pixels differ.*build_cache\(root, 'val', "
                                         r"image_size=32, force=True\)"):
        open_cache(built, "val", image_size=32)


def test_overwritten_label_is_refused(built: Path) -> None:
    paths = _val_paths(built)
    labels = np.load(paths.labels)
    labels[3] = (labels[3] + 1) % 4  # still a valid class: only the label file can tell
    np.save(paths.labels, labels)
    with pytest.raises(CacheError, match=r"row 3 holds label .* the label file says"):
        open_cache(built, "val", image_size=32)


def test_label_out_of_range_and_wrong_dtype(built: Path) -> None:
    paths = _val_paths(built)
    labels = np.load(paths.labels)
    np.save(paths.labels, labels.astype(np.int32))
    with pytest.raises(CacheError, match=r"holds int32 .*expected int64"):
        open_cache(built, "val", image_size=32)
    labels[0] = 99
    np.save(paths.labels, labels)
    with pytest.raises(CacheError, match=r"labels 0\.\.99, outside 0\.\.3"):
        open_cache(built, "val", image_size=32)


def test_truncated_images_file_is_refused(built: Path) -> None:
    path = _val_paths(built).images
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(CacheError, match=r"corrupt: cannot map .*truncated.*force=True"):
        open_cache(built, "val", image_size=32)


def test_wrong_shape_is_refused(built: Path) -> None:
    np.save(_val_paths(built).images, np.zeros((16, 32, 32, 1), np.uint8))
    with pytest.raises(CacheError, match=r"holds uint8 \(16, 32, 32, 1\), expected uint8 \(16, 32, 32, 3\)"):
        open_cache(built, "val", image_size=32)


def test_corrupt_cache_is_rebuilt_by_build_and_by_the_command(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _val_paths(built).images
    original = path.read_bytes()
    with path.open("r+b") as handle:
        handle.seek(len(original) - 10)
        handle.write(b"\xff" * 10)  # the last row is always sampled
    build_cache(built, "val", image_size=32, workers=1)
    assert path.read_bytes() == original
    with path.open("r+b") as handle:
        handle.truncate(1000)
    assert main(["cache", "--root", str(built), "--split", "val", "--image-size", "32", "--workers", "1"]) == 0
    assert "corrupt; rebuilding" in capsys.readouterr().err
    assert path.read_bytes() == original


# --- miniplaces cache --verify -------------------------------------------------------------------

def _edit_in_place_keeping_size_and_mtime(path: Path) -> None:
    stat = path.stat()
    replacement = path.with_suffix(".new.jpg")
    Image.new("RGB", (32, 32), (250, 10, 10)).save(replacement, format="JPEG", quality=50)
    data = replacement.read_bytes()
    replacement.unlink()
    assert len(data) < stat.st_size
    path.write_bytes(data + b"\0" * (stat.st_size - len(data)))  # decoders stop at the end marker
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_verify_names_an_image_edited_in_place(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = images_dir(built) / read_split(built, "val")[6].relpath
    _edit_in_place_keeping_size_and_mtime(victim)
    assert cache_state(built, "val", 32) == "current"  # size and mtime cannot tell
    problems = verify_cache(built, "val", 32, workers=2)
    assert problems == [f"{victim}: decodes differently from row 6 of val-32.images.npy "
                        f"(edited after the cache was built?)"]
    args = ["cache", "--root", str(built), "--split", "val", "--image-size", "32", "--verify", "--workers", "1"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert str(victim) in out and f"miniplaces cache --root {built} --split val --image-size 32 --force" in out


def test_verify_sound_cache_and_unsampled_corruption(built: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    args = ["cache", "--root", str(built), "--split", "val", "--image-size", "32", "--verify", "--workers", "1"]
    assert main(args) == 0 and "val: OK, 16 cached images match" in capsys.readouterr().out
    monkeypatch.setattr(cache_module, "SAMPLED_ROWS", 2)
    build_cache(built, "val", image_size=32, workers=1, force=True)
    unsampled = sorted(set(range(16)) - set(cache_module.sampled_rows(16).tolist()))[0]
    pixels = np.load(_val_paths(built).images, mmap_mode="r+")
    pixels[unsampled, 0, 0] ^= 1
    pixels.flush()
    del pixels
    assert cache_state(built, "val", 32) == "current"  # the sampled check cannot see this row
    problems = verify_cache(built, "val", 32, workers=1)
    assert len(problems) == 2 and "contents differ from those written at build time" in problems[0]
    assert f"row {unsampled} of" in problems[1]


def test_verify_without_a_cache_is_one_error(data_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "--root", str(data_copy), "--split", "val", "--verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no decoded cache of the val split") and err.count("\n") == 1
    assert err.endswith(f"to verify; build it with `miniplaces cache --root {data_copy} --split val`\n")


# --- full disk, leftovers ------------------------------------------------------------------------

def _raise(code: int):  # noqa: ANN202
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))
    return fail


def test_full_disk_fails_cleanly_and_keeps_the_old_cache(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _val_paths(built).images.parent
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setattr(os, "posix_fallocate", _raise(errno.ENOSPC))
    with pytest.raises(CacheError, match=r"not enough disk space in .* for the val cache: it needs"):
        build_cache(built, "val", image_size=32, workers=1, force=True)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert cache_state(built, "val", 32) == "current"
    with pytest.raises(CacheError, match="not enough disk space"):
        build_cache(built, "train", image_size=32, workers=1)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_without_fallocate_the_free_space_is_compared(data_copy: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cache"
    monkeypatch.setattr(os, "posix_fallocate", _raise(errno.EOPNOTSUPP))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(CacheError, match="needs 0.00 GiB, 0.00 GiB are free"):
        build_cache(data_copy, "val", image_size=32, cache_dir=out, workers=1)
    assert list(out.iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 10**12))
    build_cache(data_copy, "val", image_size=32, cache_dir=out, workers=1)
    assert cache_state(data_copy, "val", 32, out) == "current"


def test_write_error_is_a_cache_error_without_leftovers(data_copy: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cache"
    monkeypatch.setattr(cache_module, "open_memmap", _raise(errno.ENOSPC))
    with pytest.raises(CacheError, match=r"cannot write the val cache in .*No space left"):
        build_cache(data_copy, "val", image_size=32, cache_dir=out, workers=1)
    assert list(out.iterdir()) == []


def test_temp_files_of_killed_builds_are_removed(data_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    out.mkdir()
    dead = 2**22 + 12345  # above Linux's pid_max: no such process
    stale = [out / f".val-32.images.npy.{dead}-0123abcd.tmp", out / f"val-32.images.npy.tmp-{dead}-89abcdef"]
    alive = out / f".val-32.images.npy.{os.getpid()}-0123abcd.tmp"
    for path in [*stale, alive]:
        path.write_bytes(b"x" * 100)
    build_cache(data_copy, "val", image_size=32, cache_dir=out, workers=1)
    assert not any(p.exists() for p in stale) and alive.exists()


# --- image size bound ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [MAX_IMAGE_SIZE + 1, 100_000, 0, True, 32.0])
def test_image_size_out_of_bounds_creates_nothing(data_copy: Path, tmp_path: Path, size: object) -> None:
    out = tmp_path / "cache"
    with pytest.raises(CacheError, match=f"from 1 to {MAX_IMAGE_SIZE}, got"):
        build_cache(data_copy, "val", image_size=size, cache_dir=out, workers=1)  # type: ignore[arg-type]
    assert not out.exists()


def test_cache_command_refuses_a_huge_image_size(data_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["cache", "--root", str(data_copy), "--split", "val", "--image-size", "1500"])
    assert exit_info.value.code == 2
    assert f"must be from 1 to {MAX_IMAGE_SIZE} pixels, got 1500" in capsys.readouterr().err
    assert not (data_copy / "cache").exists()
