from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from dataset_edits import copy_of
from PIL import Image

from miniplaces.data import ImageReadError, LayoutError, MiniPlaces, read_categories, read_split
from miniplaces.data.transforms import train_transform, val_transform


def test_splits_and_categories(synth_root: Path) -> None:
    assert read_categories(synth_root) == [f"scene_{i:03d}" for i in range(4)]
    train = read_split(synth_root, "train")
    assert len(train) == 48 and train[0].relpath == "train/s/scene_000/00000001.jpg" and train[0].label == 0
    assert len(read_split(synth_root, "val")) == 16
    test = read_split(synth_root, "test")
    assert [s.relpath for s in test] == sorted(s.relpath for s in test) and all(s.label is None for s in test)


def test_dataset_returns_rgb_and_label(synth_root: Path) -> None:
    ds = MiniPlaces(synth_root, "val")
    image, label = ds[0]
    assert image.mode == "RGB" and 0 <= label < 4
    assert MiniPlaces(synth_root, "test")[0][1] == -1


@pytest.mark.parametrize("mode", ["L", "CMYK", "P"])
def test_other_modes_become_rgb(synth_root: Path, tmp_path: Path, mode: str) -> None:
    root = copy_of(synth_root, tmp_path)
    path = root / "images" / read_split(root, "val")[0].relpath
    buffer = io.BytesIO()
    Image.open(path).convert(mode).save(buffer, "PNG" if mode == "P" else "JPEG")
    path.write_bytes(buffer.getvalue())
    image, _ = MiniPlaces(root, "val")[0]
    assert image.mode == "RGB"


def test_bad_label_lines_are_all_named(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    lines = (root / "val.txt").read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 1)[0] + " 4"  # out of range: 4 classes
    lines[5] = lines[5].rsplit(" ", 1)[0]  # no label
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(LayoutError) as info:
        MiniPlaces(root, "val")
    message = str(info.value)
    assert "val.txt:3: label 4 out of range 0..3" in message
    assert "val.txt:6: expected '<image path> <label>'" in message


def test_unreadable_image_raises_or_is_skipped(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    path = root / "images" / read_split(root, "val")[0].relpath
    path.write_bytes(path.read_bytes()[:100])  # truncated JPEG
    with pytest.raises(ImageReadError, match=path.name):
        MiniPlaces(root, "val")[0]
    ds = MiniPlaces(root, "val", skip_unreadable=True)
    with pytest.warns(UserWarning, match="skipping unreadable"):
        _, label = ds[0]
    assert label == ds.samples[1].label and ds.skipped == {ds.samples[0].relpath}


def test_missing_root_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="does not exist$") as info:
        MiniPlaces(tmp_path / "nowhere", "train")
    # The command line turns the fix into the commands to run.
    from miniplaces.cli import for_the_command_line

    assert for_the_command_line(info.value).endswith(
        f"Run `miniplaces download --root {tmp_path / 'nowhere'}` or `miniplaces synth --root {tmp_path / 'nowhere'}`.")


def test_transforms_shape_range_and_seed(synth_root: Path) -> None:
    image, _ = MiniPlaces(synth_root, "train")[0]
    for transform in (train_transform(), val_transform()):
        out = transform(image)
        assert out.shape == (3, 128, 128) and out.dtype == torch.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
    torch.manual_seed(3)
    a = train_transform()(image)
    torch.manual_seed(3)
    b = train_transform()(image)
    assert torch.equal(a, b)
    assert torch.equal(val_transform()(image), val_transform()(image))
