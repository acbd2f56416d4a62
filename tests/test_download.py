from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import pytest
from local_server import FileServer, closed_port, label_files, make_archive

from miniplaces.data import download
from miniplaces.data.download import (
    DownloadError,
    OfflineError,
    UnsafeArchiveError,
    download_dataset,
    extract_archive,
    fetch,
)
from miniplaces.data.layout import DatasetFix


@pytest.fixture(scope="module")
def archive_bytes(synth_root: Path) -> bytes:
    return make_archive(synth_root)


def test_full_download_extract_verify(synth_root: Path, archive_bytes: bytes, tmp_path: Path) -> None:
    files = {"/mirror/data.tar.gz": archive_bytes, **label_files(synth_root)}
    calls: list[tuple[str, int, int | None]] = []
    with FileServer(files) as server:
        result = download_dataset(tmp_path / "mp", url=f"{server.base}/mirror/data.tar.gz",
                                  progress=lambda *a: calls.append(a))
    assert result.report is not None and result.report.ok, result.report.problems
    assert result.report.splits["train"].images == 48 and result.report.splits["test"].images == 5
    assert result.label_sources == {n: f"{server.base}/mirror/{n}" for n in ("train.txt", "val.txt", "categories.txt")}
    assert [path for path, _ in server.requests] == ["/mirror/data.tar.gz", "/mirror/train.txt", "/mirror/val.txt",
                                                     "/mirror/categories.txt"]
    root = tmp_path / "mp"
    assert (root / "images/val/00000001.jpg").read_bytes() == (synth_root / "images/val/00000001.jpg").read_bytes()
    assert (root / "objects/not_labels.txt").is_file()  # the archive's other folders are kept
    assert not (root / "data.tar.gz").exists() and not (root / "data.tar.gz.part").exists()
    archive_calls = [c for c in calls if c[0] == "data.tar.gz"]
    assert archive_calls[-1] == ("data.tar.gz", len(archive_bytes), len(archive_bytes))
    assert [c[1] for c in archive_calls] == sorted(c[1] for c in archive_calls)


def test_labels_inside_archive_and_top_folder_stripped(synth_root: Path, tmp_path: Path) -> None:
    files = {"/d/data.tar.gz": make_archive(synth_root, prefix="data/", with_labels=True)}
    with FileServer(files) as server:
        result = download_dataset(tmp_path, url=f"{server.base}/d/data.tar.gz", keep_archive=True)
    assert result.report is not None and result.report.ok
    assert result.label_sources == dict.fromkeys(("train.txt", "val.txt", "categories.txt"), "archive")
    assert server.requests == [("/d/data.tar.gz", None)]
    assert (tmp_path / "images/train").is_dir() and not (tmp_path / "data").exists()
    assert (tmp_path / "data.tar.gz").is_file()


def test_resume_requests_only_the_rest(synth_root: Path, archive_bytes: bytes, tmp_path: Path) -> None:
    root = tmp_path / "mp"
    root.mkdir()
    (root / "data.tar.gz.part").write_bytes(archive_bytes[:1000])
    files = {"/m/data.tar.gz": archive_bytes, **label_files(synth_root, "/m/")}
    with FileServer(files) as server:
        result = download_dataset(root, url=f"{server.base}/m/data.tar.gz", keep_archive=True)
    assert server.requests[0] == ("/m/data.tar.gz", "bytes=1000-")
    assert (root / "data.tar.gz").read_bytes() == archive_bytes
    assert result.report is not None and result.report.ok


def test_server_ignoring_range_restarts(archive_bytes: bytes, tmp_path: Path) -> None:
    part = tmp_path / "data.tar.gz.part"
    part.write_bytes(b"x" * 500)  # junk: appending to it would corrupt the file
    with FileServer({"/a.tgz": archive_bytes}, honour_range=False) as server:
        fetch(f"{server.base}/a.tgz", tmp_path / "data.tar.gz")
    assert server.requests == [("/a.tgz", "bytes=500-")]
    assert (tmp_path / "data.tar.gz").read_bytes() == archive_bytes and not part.exists()


def test_complete_part_is_accepted_on_416(archive_bytes: bytes, tmp_path: Path) -> None:
    (tmp_path / "a.part").write_bytes(archive_bytes)
    with FileServer({"/a": archive_bytes}) as server:
        fetch(f"{server.base}/a", tmp_path / "a")
    assert (tmp_path / "a").read_bytes() == archive_bytes and len(server.requests) == 1


def test_http_error_lists_urls_and_manual_steps(tmp_path: Path) -> None:
    with FileServer({}) as server, pytest.raises(DownloadError) as info:
        download_dataset(tmp_path, url=f"{server.base}/nothing/data.tar.gz")
    assert not isinstance(info.value, OfflineError)
    assert f"{server.base}/nothing/data.tar.gz: Not Found" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_bad_url_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unknown url type"):
        download_dataset(tmp_path, url="mirror/data.tar.gz")


def test_offline_fails_fast_with_manual_steps(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(OfflineError) as info:
        download_dataset(tmp_path / "mp", url=f"http://127.0.0.1:{closed_port()}/data.tar.gz", timeout=2)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "cannot reach data.tar.gz" in message and "refused" in message.lower()
    assert str(tmp_path / "mp" / "data.tar.gz") in message and "train.txt, val.txt, categories.txt" in message
    # The library names no command-line flags: it says what fixes it, and the CLI spells the commands.
    assert "--root" not in message and info.value.fix == DatasetFix(tmp_path / "mp", "download")


def test_label_files_fall_back_to_devkit(
    synth_root: Path, archive_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mirror lacks the label files: they come from the development kit (here a second local path).
    files = {"/m/data.tar.gz": archive_bytes, **label_files(synth_root, "/devkit/")}
    with FileServer(files) as server:
        monkeypatch.setattr(download, "DEVKIT_URL", f"{server.base}/devkit/")
        result = download_dataset(tmp_path, url=f"{server.base}/m/data.tar.gz")
    assert result.report is not None and result.report.ok
    assert [path for path, _ in server.requests] == ["/m/data.tar.gz", "/m/train.txt", "/devkit/train.txt",
                                                     "/m/val.txt", "/devkit/val.txt", "/m/categories.txt",
                                                     "/devkit/categories.txt"]


def test_missing_label_files_error_names_every_url(
    archive_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FileServer({"/m/data.tar.gz": archive_bytes}) as server, pytest.raises(DownloadError) as info:
        monkeypatch.setattr(download, "DEVKIT_URL", f"{server.base}/devkit/")
        download_dataset(tmp_path, url=f"{server.base}/m/data.tar.gz")
    message = str(info.value)
    assert f"{server.base}/m/train.txt: Not Found" in message
    assert f"{server.base}/devkit/train.txt: Not Found" in message
    assert (tmp_path / "images/train").is_dir()  # the archive was extracted before the labels were fetched


def test_files_placed_by_hand_are_used(synth_root: Path, archive_bytes: bytes, tmp_path: Path) -> None:
    (tmp_path / "data.tar.gz").write_bytes(archive_bytes)
    for name in ("train.txt", "val.txt", "categories.txt"):
        (tmp_path / name).write_bytes((synth_root / name).read_bytes())
    result = download_dataset(tmp_path, url=f"http://127.0.0.1:{closed_port()}/data.tar.gz")
    assert result.archive_source == "local file" and result.report is not None and result.report.ok
    assert set(result.label_sources.values()) == {"local file"}


def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        ok = tarfile.TarInfo("images/train/a/ok.jpg")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"abc"))
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


@pytest.mark.parametrize(
    ("member", "data", "culprit"),
    [
        (tarfile.TarInfo("../evil.txt"), b"owned", "'../evil.txt': path escapes the root"),
        (tarfile.TarInfo("images/../../evil.txt"), b"owned", "'images/../../evil.txt': path escapes the root"),
        (tarfile.TarInfo("/tmp/evil.txt"), b"owned", "'/tmp/evil.txt': absolute path"),
        (symlink("images/train/link", "/etc/passwd"), b"", "'images/train/link': symbolic link (to '/etc/passwd')"),
        (special("images/train/hard", tarfile.LNKTYPE), b"", "'images/train/hard': hard link"),
        (special("images/train/dev", tarfile.CHRTYPE), b"", "'images/train/dev': device file"),
        (special("images/train/pipe", tarfile.FIFOTYPE), b"", "'images/train/pipe': FIFO"),
    ],
)
def test_unsafe_archive_rejected_before_writing(
    tmp_path: Path, member: tarfile.TarInfo, data: bytes, culprit: str
) -> None:
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(tar_with(member, data))
    root = tmp_path / "root" / "mp"
    root.mkdir(parents=True)
    with pytest.raises(UnsafeArchiveError) as info:
        extract_archive(archive, root)
    assert culprit in str(info.value) and "nothing was extracted" in str(info.value)
    assert not list(root.iterdir()) and not (tmp_path / "root" / "evil.txt").exists()


def test_unsafe_archive_names_every_member(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("../a", "../b"):
            tar.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
        tar.addfile(symlink("images/c", "x"))
    (tmp_path / "x.tgz").write_bytes(buffer.getvalue())
    with pytest.raises(UnsafeArchiveError) as info:
        extract_archive(tmp_path / "x.tgz", tmp_path / "out")
    assert all(name in str(info.value) for name in ("'../a'", "'../b'", "'images/c'"))


def test_not_an_archive_and_no_images(tmp_path: Path) -> None:
    (tmp_path / "a.tgz").write_bytes(b"this is not a tar file")
    with pytest.raises(DownloadError, match="not a readable tar archive"):
        extract_archive(tmp_path / "a.tgz", tmp_path / "out")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(tarfile.TarInfo("photos/x.jpg"), io.BytesIO(b""))
    (tmp_path / "b.tgz").write_bytes(buffer.getvalue())
    with pytest.raises(DownloadError, match="no images/train or images/val folder"):
        extract_archive(tmp_path / "b.tgz", tmp_path / "out")


def test_truncated_transfer_keeps_part_for_resume(archive_bytes: bytes, tmp_path: Path) -> None:
    server = FileServer({"/a": archive_bytes})
    original = server.httpd.RequestHandlerClass

    class Liar(original):  # type: ignore[misc, valid-type]
        def do_GET(self) -> None:  # noqa: N802
            server.requests.append((self.path, self.headers.get("Range")))
            self.send_response(200)
            self.send_header("Content-Length", str(len(archive_bytes)))
            self.end_headers()
            self.wfile.write(archive_bytes[:700])

    server.httpd.RequestHandlerClass = Liar
    with server, pytest.raises(DownloadError, match="rerun to resume"):
        fetch(f"{server.base}/a", tmp_path / "a")
    assert (tmp_path / "a.part").read_bytes() == archive_bytes[:700] and not (tmp_path / "a").exists()

