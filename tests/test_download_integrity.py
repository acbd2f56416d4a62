"""Download and extraction trust nothing: the archive is checked end to end (announced size,
gzip CRC, SHA-256) before anything is written, links already in the destination are never
followed, colliding members are refused, and a failed offline run leaves no folder behind."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from local_server import FileServer, closed_port, make_archive

from miniplaces.cli import main
from miniplaces.data.download import (
    DownloadError,
    OfflineError,
    UnsafeArchiveError,
    download_dataset,
    extract_archive,
    fetch,
)


@pytest.fixture(scope="module")
def archive_bytes(synth_root: Path) -> bytes:
    return make_archive(synth_root, with_labels=True)


def _tar(*members: tuple[str, bytes | None]) -> bytes:
    """A tar.gz of (name, data) members; data None makes a folder."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- links already in the destination ------------------------------------------------------------

def test_symlinked_folder_in_destination_is_not_followed(tmp_path: Path) -> None:
    archive = _write(tmp_path / "a.tgz", _tar(("images/train/a/x.jpg", b"abc")))
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "images").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeArchiveError, match=r"root/images is a symbolic link already in the destination"):
        extract_archive(archive, root)
    assert list(outside.iterdir()) == []


def test_symlinked_file_in_destination_is_not_written_through(tmp_path: Path) -> None:
    archive = _write(tmp_path / "a.tgz", _tar(("images/train/a/x.jpg", b"abc")))
    victim = _write(tmp_path / "victim.txt", b"precious")
    root = tmp_path / "root"
    (root / "images/train/a").mkdir(parents=True)
    (root / "images/train/a/x.jpg").symlink_to(victim)
    with pytest.raises(UnsafeArchiveError, match=r"x\.jpg is a symbolic link"):
        extract_archive(archive, root)
    assert victim.read_bytes() == b"precious"


def test_file_in_the_way_of_a_folder_is_a_clean_error(tmp_path: Path) -> None:
    archive = _write(tmp_path / "a.tgz", _tar(("images/train/a/x.jpg", b"abc")))
    root = tmp_path / "root"
    root.mkdir()
    _write(root / "images", b"not a folder")
    with pytest.raises(DownloadError, match=r"cannot extract into .*root/images: a file of that name is in the way"):
        extract_archive(archive, root)


# --- colliding members -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "members",
    [
        [("images/train/a", b"file"), ("images/train/a/x.jpg", b"abc")],  # a file, then a folder's member
        [("images/train/a", b"file"), ("images/train/a", None)],  # a file, then a folder
        [("images/train/a", None), ("images/train/a", b"file")],  # a folder, then a file
        [("images/train/a.jpg", b"one"), ("images/train/a.jpg", b"two")],  # one file twice
    ],
    ids=["file-then-member", "file-then-folder", "folder-then-file", "twice"],
)
def test_colliding_members_are_refused_before_writing(tmp_path: Path, members: list) -> None:
    archive = _write(tmp_path / "a.tgz", _tar(("images/val/ok.jpg", b"ok"), *members))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(UnsafeArchiveError, match=r"(?s)members collide; nothing was extracted.*'images/train/a"):
        extract_archive(archive, root)
    assert list(root.iterdir()) == []


def test_download_command_on_a_colliding_archive_is_one_error(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _write(root / "data.tar.gz", _tar(("images/train/a", b"file"), ("images/train/a/x.jpg", b"abc")))
    assert main(["download", "--root", str(root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "\nerror:" in err and "members collide" in err and "Traceback" not in err


# --- the archive as a whole, before anything is extracted -------------------------------------------

def test_bad_gzip_crc_is_caught_before_extracting(archive_bytes: bytes, tmp_path: Path) -> None:
    damaged = bytearray(archive_bytes)
    damaged[-8] ^= 0xFF  # the CRC-32 in gzip's trailer
    archive = _write(tmp_path / "data.tar.gz", bytes(damaged))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DownloadError, match=r"CRC check failed.*nothing was extracted"):
        extract_archive(archive, root)
    assert list(root.iterdir()) == []


def test_truncated_gzip_is_caught_before_extracting(archive_bytes: bytes, tmp_path: Path) -> None:
    archive = _write(tmp_path / "data.tar.gz", archive_bytes[:-6])  # the tar blocks are whole, the trailer not
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DownloadError, match=r"not a readable tar archive, or corrupt .*nothing was extracted"):
        extract_archive(archive, root)
    assert list(root.iterdir()) == []


def test_sha256_is_checked_before_extracting(archive_bytes: bytes, tmp_path: Path) -> None:
    archive = _write(tmp_path / "data.tar.gz", archive_bytes)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DownloadError, match=r"SHA-256 is [0-9a-f]{64}, expected 0{64}; nothing was extracted"):
        extract_archive(archive, root, sha256="0" * 64)
    assert list(root.iterdir()) == []
    good = hashlib.sha256(archive_bytes).hexdigest().upper()
    assert "train.txt" in extract_archive(archive, root, sha256=good)
    assert (root / "images/train").is_dir()


def test_sha256_flag(archive_bytes: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _write(root / "data.tar.gz", archive_bytes)
    with pytest.raises(SystemExit) as exit_info:
        main(["download", "--root", str(root), "--sha256", "abc"])
    assert exit_info.value.code == 2 and "must be 64 hexadecimal digits" in capsys.readouterr().err
    assert main(["download", "--root", str(root), "--quiet", "--sha256", "f" * 64]) == 2
    err = capsys.readouterr().err
    assert "\nerror:" in err and f"expected {'f' * 64}" in err and not (root / "images").exists()
    digest = hashlib.sha256(archive_bytes).hexdigest()
    assert main(["download", "--root", str(root), "--quiet", "--sha256", digest, "--workers", "1"]) == 0


# --- the size the server announced ---------------------------------------------------------------------

def test_resume_never_mixes_two_versions_of_the_file(archive_bytes: bytes, synth_root: Path,
                                                     tmp_path: Path) -> None:
    newer = make_archive(synth_root, prefix="data/")  # another archive of another size at the same URL
    assert len(newer) != len(archive_bytes) and newer[:700] != archive_bytes[:700]
    with FileServer({"/a": archive_bytes}, cut_after=700) as server, pytest.raises(DownloadError, match="resume"):
        fetch(f"{server.base}/a", tmp_path / "a")
    with FileServer({"/a": newer}) as server:
        fetch(f"{server.base}/a", tmp_path / "a")
    assert server.requests == [("/a", "bytes=700-"), ("/a", None)]  # the announced total differs: restart
    assert (tmp_path / "a").read_bytes() == newer
    assert not (tmp_path / "a.part").exists() and not (tmp_path / "a.part.json").exists()


def test_resume_sends_if_range_so_a_changed_file_comes_whole(archive_bytes: bytes, tmp_path: Path) -> None:
    changed = bytes(b ^ 0x55 for b in archive_bytes)  # same size, other bytes
    with FileServer({"/a": archive_bytes}, etags={"/a": '"v1"'}, cut_after=700) as server, \
            pytest.raises(DownloadError):
        fetch(f"{server.base}/a", tmp_path / "a")
    with FileServer({"/a": changed}, etags={"/a": '"v2"'}) as server:
        fetch(f"{server.base}/a", tmp_path / "a")
    assert server.if_range == ['"v1"'] and (tmp_path / "a").read_bytes() == changed
    with FileServer({"/a": archive_bytes}, etags={"/a": '"v1"'}, cut_after=700) as server, \
            pytest.raises(DownloadError):
        fetch(f"{server.base}/a", tmp_path / "c")
    with FileServer({"/a": archive_bytes}, etags={"/a": '"v1"'}) as server:
        fetch(f"{server.base}/a", tmp_path / "c")
    assert server.requests == [("/a", "bytes=700-")] and (tmp_path / "c").read_bytes() == archive_bytes


# --- failed runs leave nothing behind -------------------------------------------------------------------

def test_offline_run_leaves_no_empty_root(tmp_path: Path) -> None:
    root = tmp_path / "new" / "mp"
    with pytest.raises(OfflineError):
        download_dataset(root, url=f"http://127.0.0.1:{closed_port()}/data.tar.gz", timeout=2)
    assert not (tmp_path / "new").exists()


def test_offline_command_leaves_an_existing_root_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = tmp_path / "fresh"
    url = f"http://127.0.0.1:{closed_port()}/data.tar.gz"
    assert main(["download", "--root", str(fresh), "--url", url, "--timeout", "2", "--quiet"]) == 2
    assert "cannot reach" in capsys.readouterr().err and not fresh.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["download", "--root", str(existing), "--url", url, "--timeout", "2", "--quiet"]) == 2
    assert existing.is_dir()
