"""Download, check and extract the official MiniPlaces archive and its label files.

Where things come from and go (ROOT is `--root`):

- `ROOT/data.tar.gz`: the image archive, from `--url` when given, else the official
  URLs in turn. It is fetched into `ROOT/data.tar.gz.part` and renamed when complete;
  an interrupted download resumes from the `.part` file (HTTP Range; a server that
  ignores Range makes it start over). An archive already at `ROOT/data.tar.gz` is used
  as it is, so it can be placed there by hand.
- `ROOT/images/{train,val,test}`: the archive's `images/` folder (the official archive
  holds `images/` and `objects/` at its top level; a single folder above them, as in
  `data/images/…`, is stripped). The archive is checked as a whole before anything is
  written: the whole stream is read once (so gzip's CRC and length of every byte are
  checked, and the SHA-256 when one is given), then the member list: absolute paths,
  `..`, links, device files and colliding members (a file and a folder of one name)
  reject it. Extraction never follows a link already in ROOT: such a link is refused,
  and every file is written to a temporary name and renamed over its target.
- `ROOT/{train,val,categories}.txt`: taken, in this order, from the archive when it holds
  them next to `images/`, from a file already in ROOT, from the mirror's base URL
  (the folder of `--url`), and from the development kit on GitHub.

Then `verify_dataset` checks the result. Only `urllib` is used.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.client
import json
import logging
import lzma
import os
import re
import shutil
import ssl
import tarfile
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from miniplaces import __version__
from miniplaces.data.layout import DatasetFix, images_dir
from miniplaces.data.verify import VerifyReport, verify_dataset
from miniplaces.errors import MiniPlacesError
from miniplaces.fileio import atomic_write_json

ARCHIVE_URLS = (
    "https://places.csail.mit.edu/miniplaces/data/data.tar.gz",
    "http://miniplaces.csail.mit.edu/data/data.tar.gz",
)
DEVKIT_URL = "https://raw.githubusercontent.com/CSAILVision/miniplaces/master/data/"
DEVKIT_PAGE = "https://github.com/CSAILVision/miniplaces/tree/master/data"
ARCHIVE_NAME = "data.tar.gz"
LABEL_FILES = ("train.txt", "val.txt", "categories.txt")
CHUNK = 1 << 20
MAX_NAMED_MEMBERS = 10

# (file name, bytes so far, total bytes or None when the server does not say)
Progress = Callable[[str, int, int | None], None]

logger = logging.getLogger(__name__)


class DownloadError(MiniPlacesError):
    """A download failed (server error, incomplete transfer, corrupt archive)."""

    def __init__(self, message: str, fix: DatasetFix | None = None) -> None:
        super().__init__(message)
        self.fix = fix


class OfflineError(DownloadError):
    """No server could be reached."""


class UnsafeArchiveError(MiniPlacesError):
    """The archive holds a member that could write outside the root, a link or a device file,
    members that collide, or the destination holds a link that extraction would follow."""


def check_sha256(value: str) -> str:
    """`value` in lower case when it is 64 hexadecimal digits, else `MiniPlacesError`."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value.strip()):
        raise MiniPlacesError(f"an expected SHA-256 is 64 hexadecimal digits, got {value!r}")
    return value.strip().lower()


@dataclass
class DownloadResult:
    root: Path
    archive_source: str  # the URL it came from, or "already extracted" / "local file"
    label_sources: dict[str, str] = field(default_factory=dict)  # file name → where it came from
    report: VerifyReport | None = None


def manual_instructions(root: Path) -> str:
    """How to set the dataset up by hand, for error messages."""
    return (
        f"To set it up by hand: put the archive at {root / ARCHIVE_NAME} and train.txt, val.txt, categories.txt "
        f"(from the development kit, {DEVKIT_PAGE}) in {root}/, then rerun the download, "
        f"which uses the files already there and only extracts; or extract the archive yourself so that "
        f"{root}/images/train, images/val (and images/test) exist."
    )


def _unreachable(err: BaseException) -> bool:
    """True when the server could not be reached at all (refused, DNS, timeout), not when it said no."""
    if isinstance(err, HTTPError):
        return False
    if isinstance(err, URLError):
        return not isinstance(err.reason, ssl.SSLError)
    return isinstance(err, TimeoutError | ConnectionError)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """`bytes 100-199/200` → (100, 200); `bytes */200` → (None, 200); unknown total → None."""
    match = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", (value or "").strip())
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _read_record(path: Path) -> dict[str, Any]:
    """What the server announced when a part file was started ({} when unknown or unreadable)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def fetch(
    url: str,
    dest: Path | str,
    *,
    progress: Progress | None = None,
    timeout: float = 10.0,
    chunk_size: int = CHUNK,
) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming a partial `.part` file.

    What the server announced for the file (its URL, total size, ETag, Last-Modified) is kept
    beside the part in `dest.part.json`. A resumed request carries `If-Range`, so a server
    whose file changed sends it whole; a resumed answer whose total differs from the one
    first announced starts over: the part is never completed with bytes of another file.

    Raises the urllib error when the request fails (the caller decides whether to try
    another URL), `DownloadError` when the transfer stops early or not at the announced
    size (the `.part` file is kept, so a rerun resumes).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    record_path = dest.with_name(dest.name + ".part.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # later rounds only after restarting from zero
        offset = part.stat().st_size if part.exists() else 0
        # A part may be resumed from another URL (the official mirrors serve one file); the total
        # and If-Range below make sure it is the same file.
        record = _read_record(record_path) if offset else {}
        headers = {"User-Agent": f"miniplaces/{__version__}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            validator = record.get("etag") if not str(record.get("etag", "W/")).startswith("W/") else None
            validator = validator or record.get("last_modified")
            if validator:
                headers["If-Range"] = validator
        try:
            response = urlopen(Request(url, headers=headers), timeout=timeout)
        except HTTPError as err:
            if err.code != 416 or not offset:
                raise
            # Range not satisfiable: the part is already whole when the server's total equals it.
            _, total = _content_range(err.headers.get("Content-Range"))
            err.close()
            if total == offset and record.get("total") in (None, total):
                part.replace(dest)
                record_path.unlink(missing_ok=True)
                return dest
            part.unlink()
            continue
        with response:
            status = getattr(response, "status", None)
            start, total = _content_range(response.headers.get("Content-Range"))
            announced = record.get("total")
            if offset and status == 206 and start == offset and None not in (total, announced) \
                    and total != announced:
                logger.info("%s: the file is now %s bytes, not %s; downloading it again", url, total, announced)
                part.unlink()
                continue
            if offset and status == 206 and start == offset:
                mode, done = "ab", offset
            elif status == 206:
                # A range we did not ask for: drop the part and ask for the whole file.
                part.unlink(missing_ok=True)
                continue
            else:
                # The server ignored Range (200) or answered another range: start over.
                if offset:
                    logger.info("%s: server ignored the range request; downloading from the start", url)
                mode, done = "wb", 0
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                atomic_write_json(record_path, {
                    "url": url,
                    "total": total,
                    "etag": response.headers.get("ETag"),
                    "last_modified": response.headers.get("Last-Modified"),
                })
            if progress:
                progress(dest.name, done, total)
            try:
                with part.open(mode) as out:
                    while chunk := response.read(chunk_size):
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(dest.name, done, total)
            except (OSError, http.client.HTTPException) as err:
                raise DownloadError(
                    f"{url}: transfer interrupted after {done:,} bytes ({err}); rerun to resume from {part}"
                ) from err
        if total is not None and done != total:
            raise DownloadError(f"{url}: got {done:,} of {total:,} bytes; rerun to resume from {part}")
        part.replace(dest)
        record_path.unlink(missing_ok=True)
        return dest
    raise DownloadError(f"{url}: the server rejects resuming {part}; delete it and rerun")


def fetch_first(urls: list[str], dest: Path, root: Path, *, progress: Progress | None, timeout: float) -> str:
    """Fetch the first of `urls` that works; returns it. Fails with every URL's reason and manual steps."""
    failures: list[str] = []
    unreachable = True
    for url in urls:
        try:
            fetch(url, dest, progress=progress, timeout=timeout)
            return url
        except ValueError as err:  # not a URL urllib can open, e.g. a bare path
            unreachable = False
            failures.append(f"{url}: {err}")
            continue
        except (URLError, TimeoutError, ConnectionError) as err:
            unreachable = unreachable and _unreachable(err)
            reason = err.reason if isinstance(err, URLError) else err
            failures.append(f"{url}: {reason}")
            logger.info("cannot fetch %s: %s", url, reason)
    cls, what = (OfflineError, "cannot reach") if unreachable else (DownloadError, "cannot download")
    raise cls(f"{what} {dest.name}:\n  " + "\n  ".join(failures) + f"\n{manual_instructions(root)}",
              DatasetFix(Path(root), "download"))


def _member_problem(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path escapes the root ('..')"
    if member.issym():
        return f"symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if not (member.isreg() or member.isdir()):
        return "not a regular file or folder"
    return None


def _parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    return tuple(p for p in PurePosixPath(member.name).parts if p != ".")


class _HashingReader:
    """A read-only file object that feeds every byte it hands out into `digest`."""

    def __init__(self, raw: IO[bytes], digest: hashlib._Hash) -> None:
        self.raw, self.digest = raw, digest

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        return data

    def readable(self) -> bool:
        return True


def _decompressed(magic: bytes, raw: _HashingReader) -> IO[bytes]:
    """The decompressing reader for the archive's format; each checks its own checksums at the end."""
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[arg-type]
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)  # type: ignore[arg-type]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)  # type: ignore[arg-type]
    return raw  # type: ignore[return-value]


def _read_whole(path: Path) -> tuple[list[tarfile.TarInfo], str]:
    """Read the archive from end to end once: its members and the SHA-256 of its bytes.

    Reading to the end makes gzip check the CRC-32 and length of the whole stream (tarfile
    alone stops at the end-of-archive blocks and never checks them).
    """
    digest = hashlib.sha256()
    members: list[tarfile.TarInfo] = []
    try:
        with path.open("rb") as handle:
            magic = handle.read(6)
            handle.seek(0)
            raw = _HashingReader(handle, digest)
            stream = _decompressed(magic, raw)
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                members.extend(tar)  # streaming: each member's data is read past, not kept
            while stream.read(CHUNK):
                pass
            while raw.read(CHUNK):
                pass
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError) as err:
        raise DownloadError(
            f"{path}: not a readable tar archive, or corrupt ({err}); nothing was extracted. "
            f"Delete it and download it again"
        ) from err
    return members, digest.hexdigest()


def _collisions(members: list[tarfile.TarInfo]) -> list[str]:
    """Members that would overwrite each other: a file and a folder of one name, or a file twice."""
    files: dict[tuple[str, ...], str] = {}
    folders: set[tuple[str, ...]] = set()
    problems: list[str] = []
    for member in members:
        parts = _parts(member)
        folders.update(parts[:i] for i in range(1, len(parts)))
        if member.isdir():
            folders.add(parts)
        elif parts in files:
            problems.append(f"{member.name!r}: appears twice")
        else:
            files[parts] = member.name
    problems.extend(f"{name!r}: is a file, and a folder of the same name holds other members"
                    for parts, name in files.items() if parts in folders)
    return problems


def _refuse(path: Path, what: str, problems: list[str]) -> UnsafeArchiveError:
    more = f"\n  … and {len(problems) - MAX_NAMED_MEMBERS} more" if len(problems) > MAX_NAMED_MEMBERS else ""
    return UnsafeArchiveError(
        f"{path}: refusing to extract {what}; nothing was extracted. Members:\n  "
        + "\n  ".join(problems[:MAX_NAMED_MEMBERS])
        + more
        + "\nUse the official archive or a trusted mirror."
    )


def check_archive(path: Path, sha256: str | None = None) -> tuple[list[tarfile.TarInfo], tuple[str, ...]]:
    """Read the whole archive and check it before anything is written.

    Checks the compressed stream end to end (gzip CRC and length), its SHA-256 against
    `sha256` when given, and every member. Returns the members and the folder prefix above
    `images/` (`()` for the official archive). Raises `DownloadError` for a corrupt archive
    or a wrong hash, `UnsafeArchiveError` naming every unsafe or colliding member.
    """
    members, digest = _read_whole(path)
    if sha256 is not None and digest != check_sha256(sha256):
        raise DownloadError(
            f"{path}: SHA-256 is {digest}, expected {sha256.strip().lower()}; nothing was extracted. "
            f"The file is damaged or not the one expected: delete it and download it again"
        )
    bad = [f"{m.name!r}: {problem}" for m in members if (problem := _member_problem(m))]
    bad += [f"{m.name!r}: no name" for m in members if not m.isdir() and not _parts(m)]
    if bad:
        raise _refuse(path, "an unsafe archive", bad)
    collisions = _collisions(members)
    if collisions:
        raise _refuse(path, "an archive whose members collide", collisions)
    prefixes = []
    for member in members:
        parts = _parts(member)
        for i in range(len(parts) - 1):
            if parts[i] == "images" and parts[i + 1] in ("train", "val", "test"):
                prefixes.append(parts[:i])
                break
    if not prefixes:
        names = ", ".join(m.name for m in members[:5])
        raise DownloadError(
            f"{path}: no images/train or images/val folder in the archive (it starts with: {names}); "
            f"is it the MiniPlaces data.tar.gz?"
        )
    return members, min(prefixes, key=len)


class _Destination:
    """Paths under `root` that extraction may write, refusing any link already there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders: set[Path] = set()  # checked (and created) folders

    def _refuse_link(self, path: Path) -> None:
        if path.is_symlink():
            raise UnsafeArchiveError(
                f"{path} is a symbolic link already in the destination {self.root}; extraction never "
                f"follows links: remove it (or extract elsewhere) and rerun"
            )

    def folder(self, relative: tuple[str, ...]) -> Path:
        path = self.root
        for part in relative:
            path = path / part
            if path in self.folders:
                continue
            self._refuse_link(path)
            try:
                path.mkdir(exist_ok=True)
            except (FileExistsError, NotADirectoryError) as err:
                raise DownloadError(f"cannot extract into {path}: a file of that name is in the way; "
                                    f"move it and rerun") from err
            if not path.is_dir():
                raise DownloadError(f"cannot extract into {path}: it is not a folder; move it and rerun")
            self.folders.add(path)
        return path

    def write(self, relative: tuple[str, ...], source: IO[bytes]) -> Path:
        """Copy `source` to root/relative through a temporary file and a rename (never through a link)."""
        folder = self.folder(relative[:-1])
        target = folder / relative[-1]
        self._refuse_link(target)
        if target.is_dir():
            raise DownloadError(f"cannot extract {target}: a folder of that name is in the way; move it and rerun")
        # A fresh name (so no member of the archive can share it), opened with O_EXCL | O_NOFOLLOW:
        # nothing planted at that name is ever written through.
        tmp = folder / f".{relative[-1]}.{uuid.uuid4().hex[:12]}.extracting"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            # No fsync per image: 120,000 of them cost minutes, and a crash only means extracting again.
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target


def extract_archive(path: Path | str, root: Path | str, sha256: str | None = None) -> list[str]:
    """Check, then safely extract the archive into `root` (prefix above `images/` stripped).

    `sha256`, when given, is the expected hash of the archive file. Returns the label files
    (train.txt, val.txt, categories.txt) the archive held.
    """
    path, root = Path(path), Path(root)
    members, prefix = check_archive(path, sha256)
    labels: list[str] = []
    skipped = 0
    destination = _Destination(root)
    try:
        with tarfile.open(path, "r|*") as tar:
            for index, member in enumerate(tar):
                if index >= len(members) or member.name != members[index].name:
                    raise DownloadError(f"{path} changed while it was being extracted; rerun")
                parts = _parts(member)
                if parts[: len(prefix)] != prefix or len(parts) == len(prefix):
                    skipped += not member.isdir()
                    continue
                relative = parts[len(prefix) :]
                if member.isdir():
                    destination.folder(relative)
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                with source:
                    destination.write(relative, source)
                if len(relative) == 1 and relative[0] in LABEL_FILES:
                    labels.append(relative[0])
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DownloadError(f"{path}: cannot extract ({err}); delete it and download it again") from err
    except OSError as err:
        raise DownloadError(f"cannot extract {path} into {root}: {err}") from err
    if skipped:
        logger.info("%s: skipped %d members outside %s", path, skipped, "/".join(prefix) or "the top level")
    return labels


def _already_extracted(root: Path) -> bool:
    images = images_dir(root)
    return all((images / split).is_dir() and any((images / split).iterdir()) for split in ("train", "val"))


def download_dataset(
    root: Path | str,
    *,
    url: str | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
    timeout: float = 10.0,
    keep_archive: bool = False,
    verify: bool = True,
    workers: int = 2,
    sha256: str | None = None,
) -> DownloadResult:
    """Fetch, check, extract and verify MiniPlaces into `root` (see the module docstring for the sources).

    Args:
        url: a mirror of data.tar.gz, tried instead of the official URLs.
        progress: called as bytes arrive, with (file name, bytes so far, total or None).
        log: called with one-line messages on what is being done.
        timeout: connect and read timeout in seconds (short, so an offline machine fails fast).
        keep_archive: keep `data.tar.gz` after a successful extraction.
        verify: run `verify_dataset` at the end.
        sha256: the expected SHA-256 of the archive, checked before anything is extracted.

    A run that fails before anything is written into `root` removes the folders it created,
    so an offline attempt leaves no empty dataset folder behind.
    """
    root = Path(root)
    if sha256 is not None:
        sha256 = check_sha256(sha256)
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the dataset folder {root} ({err.strerror or err}); "
                            f"choose another folder") from err
    try:
        return _download(root, url=url, progress=progress, log=log, timeout=timeout, keep_archive=keep_archive,
                         verify=verify, workers=workers, sha256=sha256)
    except BaseException:
        for folder in created:  # deepest first; stops at the first that holds something (e.g. a .part)
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _download(root: Path, *, url: str | None, progress: Progress | None, log: Callable[[str], None] | None,
              timeout: float, keep_archive: bool, verify: bool, workers: int, sha256: str | None) -> DownloadResult:
    say = log or (lambda message: None)
    archive = root / ARCHIVE_NAME
    result = DownloadResult(root=root, archive_source="already extracted")
    if _already_extracted(root) and not archive.exists():
        if sha256 is not None:
            logger.info("%s is already extracted; the expected SHA-256 is not checked", root)
        say(f"{images_dir(root)} already holds train/ and val/; not downloading the archive (delete it to redo)")
    else:
        if archive.exists():
            result.archive_source = "local file"
            say(f"using {archive}")
        else:
            urls = [url] if url else list(ARCHIVE_URLS)
            say(f"downloading {ARCHIVE_NAME} from {' or '.join(urls)}")
            result.archive_source = fetch_first(urls, archive, root, progress=progress, timeout=timeout)
        say(f"checking and extracting {archive}")
        for name in extract_archive(archive, root, sha256):
            result.label_sources[name] = "archive"
        if not keep_archive:
            archive.unlink()

    bases = ([url.rsplit("/", 1)[0] + "/"] if url else []) + [DEVKIT_URL]
    for name in LABEL_FILES:
        if name in result.label_sources:
            continue
        if (root / name).is_file():
            result.label_sources[name] = "local file"
            continue
        say(f"downloading {name}")
        result.label_sources[name] = fetch_first(
            [base + name for base in bases], root / name, root, progress=progress, timeout=timeout
        )
    if verify:
        say(f"verifying {root}")
        result.report = verify_dataset(root, decode=True, workers=workers)
    return result
