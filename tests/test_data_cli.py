from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from dataset_edits import copy_of, edit_line
from local_server import FileServer, closed_port, label_files, make_archive
from PIL import Image

from miniplaces.cli import main
from miniplaces.data.layout import read_split


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err




@pytest.mark.parametrize("command", ["download", "verify", "synth"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and "--root" in capsys.readouterr().out


def test_verify_sound(synth_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify", "--root", str(synth_root))
    assert code == 0
    assert "classes: 4" in out and "train: 48 images, 12 per class over 4 classes" in out
    assert "test: 5 images (unlabelled)" in out and "subset: 12 train images per class" in out
    assert out.rstrip().endswith("OK: the dataset is sound")


def damage_truncated(root: Path) -> str:
    path = root / "images/train/s/scene_000/00000002.jpg"
    path.write_bytes(path.read_bytes()[:120])
    return "scene_000/00000002.jpg (train.txt:2): cannot decode"


def damage_missing(root: Path) -> str:
    (root / "images/val/00000003.jpg").unlink()
    return "images/val/00000003.jpg (val.txt:3): file not found"


def damage_label_100(root: Path) -> str:
    (root / "categories.txt").write_text("".join(f"/c/class_{k:03d} {k}\n" for k in range(100)))
    edit_line(root / "train.txt", 6, "train/s/scene_000/00000007.jpg 100")
    return "train.txt:7: label 100 out of range 0..99"


def damage_label_4(root: Path) -> str:
    edit_line(root / "val.txt", 0, "val/00000001.jpg 4")
    return "val.txt:1: label 4 out of range 0..3"


def damage_no_label(root: Path) -> str:
    edit_line(root / "val.txt", 1, "val/00000002.jpg")
    return "val.txt:2: expected '<image path> <label>', got 'val/00000002.jpg'"


DAMAGES = [damage_truncated, damage_missing, damage_label_100, damage_label_4, damage_no_label]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__)
def test_verify_names_the_culprit(
    damage, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_of(synth_root, tmp_path)
    culprit = damage(root)
    code, out, _ = run(capsys, "verify", "--root", str(root))
    assert code == 1 and "FAILED:" in out and culprit in out


def test_verify_lists_every_problem(synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = copy_of(synth_root, tmp_path)
    culprits = [damage(root) for damage in (damage_truncated, damage_missing, damage_no_label)]
    code, out, _ = run(capsys, "verify", "--root", str(root), "--workers", "1")
    assert code == 1 and "FAILED: 3 problem(s):" in out
    assert all(culprit in out for culprit in culprits)


def test_verify_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify", "--root", str(tmp_path / "none"))
    assert code == 1 and "no such folder" in out and "miniplaces synth" in out


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["synth", "--classes", "3", "--per-class", "4", "--val-per-class", "2", "--test", "2", "--image-size", "24"]
    assert run(capsys, *args, "--root", str(tmp_path / "a"))[0] == 0
    code, out, _ = run(capsys, *args, "--root", str(tmp_path / "b"))
    assert code == 0 and "3 classes, 12 train, 6 val, 2 test images of 24×24 (seed 0)" in out
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    assert len(a) == 12 + 6 + 2 + 3 and a == b
    run(capsys, *args, "--root", str(tmp_path / "c"), "--seed", "1")
    c = files_of(tmp_path / "c")
    assert c.keys() == a.keys() and c["images/val/00000001.jpg"] != a["images/val/00000001.jpg"]
    assert run(capsys, "verify", "--root", str(tmp_path / "a"))[0] == 0


def test_synth_refuses_non_empty_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run(capsys, "synth", "--root", str(tmp_path), "--classes", "2", "--per-class", "1")
    assert code == 2 and "is not empty" in err and "--force" in err


def test_synth_classes_differ(synth_root: Path) -> None:
    # A nearest-class-mean classifier on 4×4 thumbnails tells the val images' classes apart:
    # the classes differ in what they look like, not only in their labels.
    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        samples = read_split(synth_root, split)
        x = [np.asarray(Image.open(synth_root / "images" / s.relpath).resize((4, 4)), np.float32).ravel()
             for s in samples]
        return np.stack(x), np.array([s.label for s in samples])

    x_train, y_train = features("train")
    x_val, y_val = features("val")
    means = np.stack([x_train[y_train == k].mean(0) for k in range(4)])  # (K, 48)
    distances = ((x_val[:, None] - means[None]) ** 2).sum(-1)  # (N, K)
    assert (distances.argmin(1) == y_val).mean() >= 0.75
    assert min(np.abs(means[i] - means[j]).mean() for i in range(4) for j in range(i + 1, 4)) > 5


def test_download_cli(synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {"/m/data.tar.gz": make_archive(synth_root), **label_files(synth_root, "/m/")}
    with FileServer(files) as server:
        code, out, err = run(capsys, "download", "--root", str(tmp_path / "mp"), "--url",
                             f"{server.base}/m/data.tar.gz")
    assert code == 0, out + err
    assert "OK: the dataset is sound" in out and "train: 48 images" in out
    assert "downloading data.tar.gz from" in err  # not a TTY: messages go to stderr, no progress bars


def test_download_cli_rejects_unsafe_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        link = tarfile.TarInfo("images/train/x.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        tar.addfile(tarfile.TarInfo("../../outside.txt"), io.BytesIO(b""))
    root = tmp_path / "mp"
    root.mkdir()
    (root / "data.tar.gz").write_bytes(buffer.getvalue())  # placed by hand: no network needed
    code, _, err = run(capsys, "download", "--root", str(root))
    assert code == 2 and "unsafe archive" in err
    assert "'images/train/x.jpg': symbolic link" in err and "'../../outside.txt': path escapes" in err
    assert sorted(p.name for p in root.iterdir()) == ["data.tar.gz"]


def test_download_cli_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "download", "--root", str(tmp_path), "--url", f"http://127.0.0.1:{closed_port()}/data.tar.gz",
                       "--timeout", "2")
    assert code == 2 and "\nerror: cannot reach data.tar.gz:\n" in err
    assert f"miniplaces verify --root {tmp_path}" in err
