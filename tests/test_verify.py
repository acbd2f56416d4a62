from __future__ import annotations

from pathlib import Path

import pytest
from dataset_edits import copy_of, edit_line

from miniplaces.data.verify import FULL_SIZES, SplitReport, VerifyReport, decode_all, verify_dataset


def test_sound_synthetic_dataset(synth_root: Path) -> None:
    report = verify_dataset(synth_root, workers=2)
    assert report.ok, report.problems
    assert report.num_classes == 4
    assert report.splits["train"].images == 48 and report.splits["val"].images == 16
    assert report.splits["train"].per_class == {0: 12, 1: 12, 2: 12, 3: 12}
    assert report.splits["test"].images == 5 and not report.splits["test"].labelled
    assert report.decoded == 48 + 16 + 5 and report.image_sizes == {(32, 32): 69}
    assert not report.is_full
    assert report.size_description() == "subset: 12 train images per class, 4 val images per class, 5 test images"


def test_full_sizes_are_recognised() -> None:
    report = VerifyReport(root=Path("x"), classes=[str(k) for k in range(100)])
    for name, size in FULL_SIZES.items():
        report.splits[name] = SplitReport(name, size, {k: size // 100 for k in range(100)}, name != "test")
    assert report.is_full and report.size_description().startswith("full dataset")
    report.splits["train"].images = 30_000
    assert not report.is_full


def test_truncated_jpeg_is_named(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    path = root / "images/train/s/scene_001/00000003.jpg"
    path.write_bytes(path.read_bytes()[:200])
    report = verify_dataset(root)
    assert not report.ok and len(report.problems) == 1
    assert report.problems[0].startswith(f"{path} (train.txt:15): cannot decode (")


def test_truncated_jpeg_found_without_thread_pool(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    path = root / "images/val/00000002.jpg"
    path.write_bytes(path.read_bytes()[:-300])
    report = verify_dataset(root, workers=1)
    assert len(report.problems) == 1 and "00000002.jpg (val.txt:2): cannot decode" in report.problems[0]


def test_missing_file_is_named(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    (root / "images/val/00000007.jpg").unlink()
    report = verify_dataset(root, decode=False)
    assert report.problems == [f"{root / 'images/val/00000007.jpg'} (val.txt:7): file not found"]


def test_label_out_of_range_and_missing_label(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    edit_line(root / "train.txt", 0, "train/s/scene_000/00000001.jpg 4")  # 4 classes: 0..3
    edit_line(root / "val.txt", 3, "val/00000004.jpg")
    report = verify_dataset(root)
    assert any("train.txt:1: label 4 out of range 0..3" in p for p in report.problems)
    assert any("val.txt:4: expected '<image path> <label>', got 'val/00000004.jpg'" in p for p in report.problems)
    assert len(report.problems) == 2


def test_label_100_with_official_class_count(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    (root / "categories.txt").write_text("".join(f"/c/class_{k} {k}\n" for k in range(100)))
    edit_line(root / "val.txt", 0, "val/00000001.jpg 100")
    report = verify_dataset(root, decode=False)
    assert any("val.txt:1: label 100 out of range 0..99" in p for p in report.problems)


def test_every_problem_is_listed(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    truncated = root / "images/train/s/scene_002/00000005.jpg"
    truncated.write_bytes(truncated.read_bytes()[:150])
    (root / "images/train/s/scene_003/00000001.jpg").unlink()
    (root / "images/val/00000009.jpg").write_bytes(b"not a jpeg")
    edit_line(root / "val.txt", 10, "val/00000011.jpg 9")
    edit_line(root / "train.txt", 4, "train/s/scene_000/00000005.jpg")
    lines = (root / "categories.txt").read_text() + "/z/zoo x\n"
    (root / "categories.txt").write_text(lines)
    report = verify_dataset(root)
    text = "\n".join(report.problems)
    assert len(report.problems) == 6, text
    for culprit in ("scene_002/00000005.jpg (train.txt:29): cannot decode", "scene_003/00000001.jpg (train.txt:37): "
                    "file not found", "00000009.jpg (val.txt:9): cannot decode", "val.txt:11: label 9 out of range",
                    "train.txt:5: expected", "categories.txt:5: expected '<name> <index>'"):
        assert culprit in text


def test_class_without_train_images_and_unlisted_files(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    lines = [line for line in (root / "train.txt").read_text().splitlines() if not line.endswith(" 2")]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    report = verify_dataset(root, decode=False)
    assert report.problems == [f"{root / 'train.txt'}: no train images for 1 classes (e.g. scene_002)"]
    assert any("12 images under" in note and "not listed in train.txt" in note for note in report.notes)


def test_missing_folder_and_files(tmp_path: Path) -> None:
    assert "no such folder; download the dataset there" in verify_dataset(tmp_path / "absent").problems[0]
    report = verify_dataset(tmp_path)
    text = "\n".join(report.problems)
    for name in ("images: missing", "categories.txt: missing", "train.txt: missing", "val.txt: missing"):
        assert name in text


def test_decode_all_keeps_order(synth_root: Path) -> None:
    paths = sorted(str(p) for p in (synth_root / "images").rglob("*.jpg"))
    paths.insert(3, str(synth_root / "nothing.jpg"))
    serial = decode_all(paths, workers=1)
    assert decode_all(paths, workers=2) == serial
    assert serial[3] == "file not found" and serial[0] == (32, 32)


@pytest.mark.real_data
def test_real_subset(real_root: Path) -> None:
    report = verify_dataset(real_root, decode=True, workers=2)
    assert report.ok, report.problems[:10]
    assert report.num_classes == 100
    assert report.splits["train"].images == 30_000 and report.splits["val"].images == 10_000
    assert report.splits["train"].per_class == {k: 300 for k in range(100)}
    assert report.decoded == 40_000 and not report.is_full
    assert report.size_description().startswith("subset: 300 train images per class, 100 val images per class")
