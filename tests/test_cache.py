"""The decoded cache: round trip against decoding, reuse, staleness, atomic writes, where it lives."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from miniplaces.cli import for_the_command_line, main
from miniplaces.cli.cache_commands import cache_command
from miniplaces.data.cache import (
    CacheError,
    build_cache,
    cache_paths,
    cache_state,
    default_cache_dir,
    open_cache,
    user_cache_dir,
)
from miniplaces.data.dataset import ImageReadError, load_rgb
from miniplaces.data.layout import images_dir, read_split


@pytest.fixture()
def data_copy(synth_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(synth_root, tmp_path / "data"))


def test_round_trip_equals_decoding(synth_root: Path, tmp_path: Path) -> None:
    ticks: list[int] = []
    build_cache(synth_root, "train", image_size=32, cache_dir=tmp_path, workers=2, progress=ticks.append)
    cache = open_cache(synth_root, "train", image_size=32, cache_dir=tmp_path)
    samples = read_split(synth_root, "train")
    assert cache.images.shape == (len(samples), 32, 32, 3) and cache.images.dtype == np.uint8
    assert sum(ticks) == len(samples)
    for i, sample in enumerate(samples):
        np.testing.assert_array_equal(cache.images[i], np.asarray(load_rgb(images_dir(synth_root) / sample.relpath)))
    assert cache.labels.dtype == np.int64
    assert cache.labels.tolist() == [s.label for s in samples]
    assert cache.meta["count"] == len(samples) and cache.meta["split"] == "train" and cache.meta["image_size"] == 32


def test_test_split_is_unlabelled(synth_root: Path, tmp_path: Path) -> None:
    build_cache(synth_root, "test", image_size=32, cache_dir=tmp_path, workers=1)
    cache = open_cache(synth_root, "test", image_size=32, cache_dir=tmp_path)
    assert len(cache) == 5 and cache.labels.tolist() == [-1] * 5


def test_other_sizes_are_resized_and_centre_cropped_like_torchvision(synth_root: Path, tmp_path: Path) -> None:
    build_cache(synth_root, "val", image_size=20, cache_dir=tmp_path, workers=1)
    cache = open_cache(synth_root, "val", image_size=20, cache_dir=tmp_path)
    for i, sample in enumerate(read_split(synth_root, "val")[:4]):
        decoded = torch.from_numpy(np.array(load_rgb(images_dir(synth_root) / sample.relpath))).permute(2, 0, 1)
        expected = TF.center_crop(TF.resize(decoded, [20], antialias=True), [20]).permute(1, 2, 0).numpy()
        assert np.abs(cache.images[i].astype(int) - expected.astype(int)).max() <= 1


def test_reused_when_current_and_rebuilt_when_labels_change(data_copy: Path) -> None:
    build_cache(data_copy, "train", image_size=32, workers=1)
    paths = cache_paths(data_copy, "train", 32)
    assert paths.images.parent == data_copy / "cache"
    before = {p: p.stat().st_mtime_ns for p in (paths.images, paths.labels, paths.meta)}
    inode = paths.images.stat().st_ino
    assert cache_state(data_copy, "train", 32) == "current"
    build_cache(data_copy, "train", image_size=32, workers=1)
    assert {p: p.stat().st_mtime_ns for p in before} == before and paths.images.stat().st_ino == inode

    lines = (data_copy / "train.txt").read_text().splitlines(keepends=True)
    (data_copy / "train.txt").write_text("".join(lines[:-1]))
    assert cache_state(data_copy, "train", 32) == "stale"
    stale_message = r"out of date; build it with build_cache\(root, 'train', image_size=32\)"
    with pytest.raises(CacheError, match=stale_message) as stale:
        open_cache(data_copy, "train", image_size=32)
    assert cache_command(stale.value.build) == f"miniplaces cache --root {data_copy} --split train --image-size 32"
    build_cache(data_copy, "train", image_size=32, workers=1)
    assert paths.images.stat().st_ino != inode
    assert len(open_cache(data_copy, "train", image_size=32)) == len(lines) - 1


def test_missing_cache_names_the_function(synth_root: Path, tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"val split .* is missing; build it with build_cache\(") as missing:
        open_cache(synth_root, "val", cache_dir=tmp_path)
    # The library names the fix as a call; the command line shows it as the command to run.
    assert for_the_command_line(missing.value).endswith(
        f"is missing; build it with `miniplaces cache --root {synth_root} --split val --cache-dir {tmp_path}`")


def test_failed_build_leaves_no_files(data_copy: Path, tmp_path: Path) -> None:
    victim = images_dir(data_copy) / read_split(data_copy, "train")[30].relpath
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG, met mid-build
    out = tmp_path / "cache"
    with pytest.raises(ImageReadError, match=victim.name):
        build_cache(data_copy, "train", image_size=32, cache_dir=out, workers=2)
    assert list(out.iterdir()) == []
    assert cache_state(data_copy, "train", 32, out) == "missing"


def test_failed_rebuild_keeps_no_half_written_cache(data_copy: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cache"
    build_cache(data_copy, "val", image_size=32, cache_dir=out, workers=1)
    old = cache_paths(data_copy, "val", 32, out).images.read_bytes()
    calls = {"n": 0}
    real_decode = load_rgb

    def failing_load(path: Path | str):  # dies on the 5th image, after 4 were written
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_decode(path)

    monkeypatch.setattr("miniplaces.data.cache.load_rgb", failing_load)
    with pytest.raises(KeyboardInterrupt):
        build_cache(data_copy, "val", image_size=32, cache_dir=out, workers=1, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["val-32.images.npy", "val-32.json", "val-32.labels.npy"]
    assert cache_paths(data_copy, "val", 32, out).images.read_bytes() == old


def test_read_only_root_falls_back_to_user_cache(data_copy: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data_copy.chmod(0o555)
    try:
        assert default_cache_dir(data_copy) == user_cache_dir(data_copy)
        assert user_cache_dir(data_copy).is_relative_to(tmp_path / "xdg" / "miniplaces")
        folder = build_cache(data_copy, "val", image_size=32, workers=1)
        assert folder == user_cache_dir(data_copy) and not (data_copy / "cache").exists()
        assert len(open_cache(data_copy, "val", image_size=32)) == 16
    finally:
        data_copy.chmod(0o755)


def test_cache_command_builds_then_reuses(data_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "--root", str(data_copy), "--split", "all", "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "train: built 48 images" in out and "val: built 16 images" in out and "test: built 5 images" in out
    assert main(["cache", "--root", str(data_copy), "--split", "val", "--image-size", "32"]) == 0
    assert "val: reused 16 images" in capsys.readouterr().out
    assert main(["cache", "--root", str(data_copy), "--split", "val", "--image-size", "32", "--force"]) == 0
    assert "val: built 16 images" in capsys.readouterr().out


def test_cache_command_reports_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "--root", str(tmp_path / "nowhere"), "--split", "train"]) == 2
    assert "does not exist" in capsys.readouterr().err
