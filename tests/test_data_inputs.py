"""Hostile data inputs end in one clean error naming the file: label files that are not
UTF-8 (or carry a BOM), unreadable images inside DataLoader workers, decompression bombs."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest
from dataset_edits import copy_of
from PIL import Image
from torch.utils.data import DataLoader

from miniplaces.cli import main
from miniplaces.data.dataset import ImageReadError, MiniPlaces, load_rgb, open_image_checked
from miniplaces.data.layout import LayoutError, read_categories, read_split
from miniplaces.data.synth import synthesize
from miniplaces.data.transforms import val_transform
from miniplaces.data.verify import verify_dataset
from miniplaces.errors import MiniPlacesError


def _insert_byte(path: Path, line_index: int, byte: bytes = b"\xe9") -> None:
    """Put a Latin-1 'é' (not UTF-8) at the start of one line."""
    lines = path.read_bytes().splitlines(keepends=True)
    lines[line_index] = byte + lines[line_index]
    path.write_bytes(b"".join(lines))


# --- label files: not UTF-8, or with a BOM ---------------------------------------------------

def test_train_file_not_utf8_names_file_and_line(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    _insert_byte(root / "train.txt", 2)
    with pytest.raises(LayoutError, match=r"train\.txt:3: not UTF-8 text \(byte 0xe9 at column 1\)"):
        read_split(root, "train")


def test_categories_not_utf8_names_file_and_line(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    _insert_byte(root / "categories.txt", 1, b"\xff\xfe")
    with pytest.raises(LayoutError, match=r"categories\.txt:2: not UTF-8"):
        MiniPlaces(root, "val")


def test_verify_lists_non_utf8_files_with_the_rest(synth_root: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_of(synth_root, tmp_path)
    _insert_byte(root / "val.txt", 4)
    (root / "images/train/s/scene_001/00000003.jpg").unlink()
    assert main(["verify", "--root", str(root), "--no-decode"]) == 1
    out = capsys.readouterr().out
    assert f"{root / 'val.txt'}:5: not UTF-8" in out and "00000003.jpg (train.txt:" in out
    assert "Traceback" not in out


def test_cli_on_non_utf8_labels_is_one_error_line(synth_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_of(synth_root, tmp_path)
    _insert_byte(root / "categories.txt", 0)
    assert main(["cache", "--root", str(root), "--split", "val", "--image-size", "32", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "categories.txt:1: not UTF-8" in err and "Traceback" not in err


def test_bom_in_categories_does_not_rename_class_0(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    expected = read_categories(root)
    path = root / "categories.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_categories(root) == expected


def test_bom_in_train_file_keeps_the_first_path(synth_root: Path, tmp_path: Path) -> None:
    root = copy_of(synth_root, tmp_path)
    expected = read_split(root, "train")
    path = root / "train.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_split(root, "train") == expected
    assert verify_dataset(root, decode=False).ok


# --- unreadable images inside DataLoader workers ---------------------------------------------

def _first_val_image(root: Path) -> Path:
    return root / "images" / read_split(root, "val")[0].relpath


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_worker_error_is_one_clean_image_read_error(synth_root: Path, tmp_path: Path, damage: str) -> None:
    root = copy_of(synth_root, tmp_path)
    dataset = MiniPlaces(root, "val", transform=val_transform(32, 36))
    victim = _first_val_image(root)
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:150])
    else:
        victim.unlink()
    loader = DataLoader(dataset, batch_size=4, num_workers=1)
    with pytest.raises(ImageReadError) as caught:
        next(iter(loader))
    message = str(caught.value)
    assert message.startswith(str(victim)) and "Traceback" not in message and "\n" not in message


def test_image_read_error_survives_pickling() -> None:
    error = ImageReadError("/data/x.jpg: file not found")
    assert str(pickle.loads(pickle.dumps(error))) == "/data/x.jpg: file not found"


# --- decompression bombs and huge images -----------------------------------------------------

def _png(path: Path, size: tuple[int, int], mode: str = "1") -> Path:
    Image.new(mode, size).save(path)
    return path


def test_decompression_bomb_error_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _png(tmp_path / "bomb.png", (64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 > 2 × 1000: Pillow raises
    with pytest.raises(ImageReadError, match=r"bomb\.png: refused"):
        load_rgb(path)


def test_decompression_bomb_warning_is_refused_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _png(tmp_path / "big.png", (64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 in (3000, 6000]: Pillow only warns
    with pytest.raises(ImageReadError, match=r"big\.png: refused before decoding: .* 4,096 pixels"):
        load_rgb(path)


def test_dataset_and_verify_name_a_bomb(synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_of(synth_root, tmp_path)
    victim = _first_val_image(root)
    Image.new("RGB", (64, 64)).save(victim, format="JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # the 32×32 images pass, the 64×64 one does not
    with pytest.raises(ImageReadError, match=victim.name):
        MiniPlaces(root, "val")[0]
    report = verify_dataset(root, workers=2)
    assert [p for p in report.problems if victim.name in p and "refused" in p] == report.problems
    assert len(report.problems) == 1


def test_long_thin_png_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _png(tmp_path / "thin.png", (200_000, 1))
    assert path.stat().st_size < 2000

    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    with pytest.raises(ImageReadError, match=r"thin\.png: refused before decoding: the image of 200000×1"):
        open_image_checked(path, max_pixels=10_000_000)
    with pytest.raises(ImageReadError, match=r"thin\.png: .* 200,000 pixels, more than the limit of 1,000"):
        open_image_checked(path, max_pixels=1000, max_aspect=None)
    with pytest.raises(ImageReadError, match="thin.png"):
        load_rgb(path)


def test_open_image_checked_accepts_ordinary_images_lazily(tmp_path: Path) -> None:
    path = _png(tmp_path / "ok.png", (40, 30), "RGB")
    with open_image_checked(path, max_pixels=1200, max_aspect=2) as image:
        assert image.size == (40, 30)
    with pytest.raises(ImageReadError, match="1,200 pixels, more than the limit of 1,199"):
        open_image_checked(path, max_pixels=1199)


# --- malformed label lines: every one named by file and line, never a traceback ----------------

@pytest.mark.parametrize(
    ("file", "index", "line", "expected"),
    [
        ("train.txt", 0, "train/s/scene_000/00000001.jpg ³", "train.txt:1: label '³' is not an integer"),
        ("train.txt", 1, "train/s/scene_000/00000002.jpg --1", "train.txt:2: label '--1' is not an integer"),
        ("val.txt", 0, "val/00000001.jpg 1.0", "val.txt:1: label '1.0' is not an integer"),
        ("categories.txt", 0, "/s/scene_000 ²", "categories.txt:1: expected '<name> <index>'"),
        ("categories.txt", 0, "/s/scene_000 --0", "categories.txt:1: expected '<name> <index>'"),
        ("categories.txt", 0, f"/s/scene_000 {10**11}", "out of range [100000000000]"),
    ],
    ids=["superscript", "double-minus", "float", "category-superscript", "category-double-minus", "huge-index"],
)
def test_malformed_label_lines_are_named(synth_root: Path, tmp_path: Path, file: str, index: int, line: str,
                                         expected: str) -> None:
    root = copy_of(synth_root, tmp_path)
    path = root / file
    lines = path.read_text().splitlines()
    lines[index] = line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LayoutError, match=re.escape(expected)):
        read_split(root, "val" if file == "val.txt" else "train")
    report = verify_dataset(root, decode=False)
    assert any(expected in problem for problem in report.problems), report.problems


# --- command-line values of the data commands ------------------------------------------------------

@pytest.mark.parametrize(
    ("command", "culprit"),
    [
        (["download", "--root", "{file}", "--quiet"], "cannot create the dataset folder {file}"),
        (["download", "--root", "{file}/sub", "--quiet"], "cannot create the dataset folder {file}/sub"),
        (["synth", "--root", "{file}"], "{file} is a file, not a folder"),
    ],
)
def test_a_file_where_a_folder_is_expected(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           command: list[str], culprit: str) -> None:
    file = tmp_path / "afile"
    file.write_text("hi")
    assert main([part.format(file=file) for part in command]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and culprit.format(file=file) in err and "Traceback" not in err
    assert file.read_text() == "hi"


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["download", "--timeout", "-1"], "--timeout: must be > 0, got -1"),
        (["download", "--timeout", "nan"], "--timeout: 'nan' is not a finite number"),
        (["synth", "--image-size", "100000"], "must be from 1 to 1024 pixels, got 100000"),
    ],
)
def test_bad_values_are_refused_before_anything_is_created(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           command: list[str], message: str) -> None:
    root = tmp_path / "new"
    with pytest.raises(SystemExit) as exit_info:
        main([command[0], "--root", str(root), *command[1:]])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err and not root.exists()


def test_synthesize_bounds_the_image_size(tmp_path: Path) -> None:
    with pytest.raises(MiniPlacesError, match="from 1 to 1024 pixels, got 100000"):
        synthesize(tmp_path / "s", classes=1, per_class=1, image_size=100_000)
    assert not (tmp_path / "s").exists()
