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
  written: absolute paths, `..`, links and device files reject it.
- `ROOT/{train,val,categories}.txt`: taken, in this order, from the archive when it holds
  them next to `images/`, from a file already in ROOT, from the mirror's base URL
  (the folder of `--url`), and from the development kit on GitHub.

Then `verify_dataset` checks the result. Only `urllib` is used.
"""

from __future__ import annotations

import http.client
import logging
import re
import shutil
import ssl
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from miniplaces import __version__
from miniplaces.data.layout import images_dir
from miniplaces.data.verify import VerifyReport, verify_dataset
from miniplaces.errors import MiniPlacesError

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


class OfflineError(DownloadError):
    """No server could be reached."""


class UnsafeArchiveError(MiniPlacesError):
    """The archive holds a member that could write outside the root, a link or a device file."""


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
        f"(from the development kit, {DEVKIT_PAGE}) in {root}/, then rerun `miniplaces download --root {root}`, "
        f"which uses the files already there and only extracts; or extract the archive yourself so that "
        f"{root}/images/train, images/val (and images/test) exist. "
        f"`miniplaces verify --root {root}` checks the result."
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


def fetch(
    url: str,
    dest: Path | str,
    *,
    progress: Progress | None = None,
    timeout: float = 10.0,
    chunk_size: int = CHUNK,
) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming a partial `.part` file.

    Raises the urllib error when the request fails (the caller decides whether to try
    another URL), `DownloadError` when the transfer stops early (the `.part` file is
    kept, so a rerun resumes).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # a second round only after restarting from zero
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": f"miniplaces/{__version__}"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = urlopen(Request(url, headers=headers), timeout=timeout)
        except HTTPError as err:
            if err.code != 416 or not offset:
                raise
            # Range not satisfiable: the part is already whole when the server's total equals it.
            _, total = _content_range(err.headers.get("Content-Range"))
            err.close()
            if total == offset:
                part.replace(dest)
                return dest
            part.unlink()
            continue
        with response:
            status = getattr(response, "status", None)
            start, total = _content_range(response.headers.get("Content-Range"))
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
    raise cls(f"{what} {dest.name}:\n  " + "\n  ".join(failures) + f"\n{manual_instructions(root)}")


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


def check_archive(path: Path) -> tuple[list[tarfile.TarInfo], tuple[str, ...]]:
    """Read the whole archive's member list and check it before anything is written.

    Returns the members and the folder prefix above `images/` (`()` for the official
    archive). Raises `UnsafeArchiveError` naming every unsafe member.
    """
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DownloadError(f"{path}: not a readable tar archive ({err}); delete it and rerun") from err
    bad = [f"{m.name!r}: {problem}" for m in members if (problem := _member_problem(m))]
    if bad:
        more = f"\n  … and {len(bad) - MAX_NAMED_MEMBERS} more" if len(bad) > MAX_NAMED_MEMBERS else ""
        raise UnsafeArchiveError(
            f"{path}: refusing to extract an unsafe archive; nothing was extracted. Members:\n  "
            + "\n  ".join(bad[:MAX_NAMED_MEMBERS])
            + more
            + "\nUse the official archive or a trusted mirror."
        )
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


def extract_archive(path: Path | str, root: Path | str) -> list[str]:
    """Safely extract the archive into `root` (prefix above `images/` stripped).

    Returns the label files (train.txt, val.txt, categories.txt) the archive held.
    """
    path, root = Path(path), Path(root)
    members, prefix = check_archive(path)
    labels: list[str] = []
    skipped = 0
    with tarfile.open(path, "r:*") as tar:
        for member in members:
            parts = _parts(member)
            if parts[: len(prefix)] != prefix or len(parts) == len(prefix):
                skipped += not member.isdir()
                continue
            relative = parts[len(prefix) :]
            target = root.joinpath(*relative)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:
                continue
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out, CHUNK)
            if len(relative) == 1 and relative[0] in LABEL_FILES:
                labels.append(relative[0])
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
) -> DownloadResult:
    """Fetch, check, extract and verify MiniPlaces into `root` (see the module docstring for the sources).

    Args:
        url: a mirror of data.tar.gz, tried instead of the official URLs.
        progress: called as bytes arrive, with (file name, bytes so far, total or None).
        log: called with one-line messages on what is being done.
        timeout: connect and read timeout in seconds (short, so an offline machine fails fast).
        keep_archive: keep `data.tar.gz` after a successful extraction.
        verify: run `verify_dataset` at the end.
    """
    root = Path(root)
    say = log or (lambda message: None)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / ARCHIVE_NAME
    result = DownloadResult(root=root, archive_source="already extracted")
    if _already_extracted(root) and not archive.exists():
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
        for name in extract_archive(archive, root):
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
