"""The official MiniPlaces layout on disk, and parsing of its label files.

```
<root>/categories.txt        "/a/abbey 0" … "/y/yard 99"
<root>/train.txt             "train/a/abbey/00000001.jpg 0"
<root>/val.txt               "val/00000001.jpg 71"
<root>/images/train/…jpg     paths in the label files are relative to images/
<root>/images/val/…jpg
<root>/images/test/…jpg      no labels: listed sorted by name
```

Parsers collect every problem (file and line) instead of stopping at the first,
so that `verify` can list them all; `read_split` raises them together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from miniplaces.errors import MiniPlacesError

SPLITS = ("train", "val", "test")
LABELLED_SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class Sample:
    """One image of a split: its path relative to `<root>/images` and its label (None for test)."""

    relpath: str
    label: int | None


@dataclass(frozen=True)
class DatasetFix:
    """What fixes a dataset problem, for the command line to spell as commands.

    `get`: the folder is missing (download it, or make a synthetic one); `verify`: a full check
    lists every problem of the folder; `download`: files placed by hand are used by a second
    download, and a full check confirms the result.
    """

    root: Path
    action: Literal["get", "verify", "download"]


class LayoutError(MiniPlacesError):
    """The dataset folder or one of its label files is malformed; `fix` says what helps, when something does."""

    def __init__(self, message: str, fix: DatasetFix | None = None) -> None:
        super().__init__(message)
        self.fix = fix


def categories_path(root: Path | str) -> Path:
    return Path(root) / "categories.txt"


def labels_path(root: Path | str, split: str) -> Path:
    return Path(root) / f"{split}.txt"


def images_dir(root: Path | str) -> Path:
    return Path(root) / "images"


def short_category_name(entry: str) -> str:
    """`/a/abbey` → `abbey`; `/f/field/wild` → `field/wild`."""
    parts = entry.strip("/").split("/")
    return "/".join(parts[1:]) if len(parts) > 1 else parts[0]


def _integer(text: str) -> int | None:
    """An ASCII decimal integer such as `3` or `-1`, else None (`³`, `--1` and `1.0` included)."""
    text = text.strip()
    return int(text) if re.fullmatch(r"-?[0-9]+", text) else None


def read_label_lines(path: Path) -> tuple[list[str], list[str]]:
    """The lines of a label file as UTF-8 text (a leading BOM dropped), plus a list of problems.

    A file that is not UTF-8 gives no lines and one problem naming the first bad line,
    so that `verify` can list it with the others instead of stopping.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        return [], [f"{path}: cannot read ({err.strerror or err})"]
    try:
        # utf-8-sig drops a BOM: editors on Windows add one, and it would otherwise rename class 0
        # and prefix the first image path.
        return data.decode("utf-8-sig").splitlines(), []
    except UnicodeDecodeError as err:
        lineno = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        byte = data[err.start : err.start + 1].hex()
        return [], [f"{path}:{lineno}: not UTF-8 text (byte 0x{byte} at column {column}); save the file as UTF-8"]


def parse_categories(path: Path) -> tuple[list[str], list[str]]:
    """Parse `categories.txt` into names ordered by index, plus a list of problems.

    Indices must be 0..K-1, each exactly once.
    """
    problems: list[str] = []
    by_index: dict[int, str] = {}
    if not path.is_file():
        return [], [f"{path}: missing; it lists the classes as '/a/abbey 0' lines"]
    lines, problems = read_label_lines(path)
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(" ")
        index = _integer(parts[1]) if len(parts) == 2 else None
        if index is None:
            problems.append(f"{path}:{lineno}: expected '<name> <index>', got {line!r}")
            continue
        if index in by_index:
            problems.append(f"{path}:{lineno}: index {index} appears twice")
            continue
        by_index[index] = short_category_name(parts[0])
    count = len(by_index)
    if by_index and sorted(by_index) != list(range(count)):
        # Only range(count) is walked: an index of 10**11 must not build a set of that size.
        missing = [i for i in range(count) if i not in by_index][:10]
        stray = sorted(i for i in by_index if not 0 <= i < count)[:10]
        problems.append(f"{path}: indices must be 0..{count - 1} without gaps; missing {missing}, "
                        f"out of range {stray}")
    return [by_index[i] for i in sorted(by_index)], problems


def parse_labels(path: Path, split: str, num_classes: int) -> tuple[list[Sample], list[str]]:
    """Parse `train.txt` or `val.txt` into samples, plus a list of problems (file:line: what)."""
    problems: list[str] = []
    samples: list[Sample] = []
    if not path.is_file():
        return [], [f"{path}: missing; it lists '{split}/… <label>' lines of the {split} split"]
    seen: set[str] = set()
    lines, problems = read_label_lines(path)
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(" ")
        where = f"{path}:{lineno}"
        if len(parts) != 2:
            problems.append(f"{where}: expected '<image path> <label>', got {line!r}")
            continue
        relpath, label_text = parts
        label = _integer(label_text)
        if label is None:
            problems.append(f"{where}: label {label_text!r} is not an integer")
            continue
        if not 0 <= label < num_classes:
            problems.append(f"{where}: label {label} out of range 0..{num_classes - 1}")
            continue
        if ".." in Path(relpath).parts or Path(relpath).is_absolute():
            problems.append(f"{where}: path {relpath!r} leaves the images folder")
            continue
        if relpath in seen:
            problems.append(f"{where}: {relpath} listed twice")
            continue
        seen.add(relpath)
        samples.append(Sample(relpath, label))
    return samples, problems


def list_test_images(root: Path | str) -> list[Sample]:
    """The unlabelled test split: every image under `images/test`, sorted by name."""
    folder = images_dir(root) / "test"
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return [Sample(p.relative_to(images_dir(root)).as_posix(), None) for p in files]


def format_problems(problems: list[str], limit: int = MAX_LISTED_PROBLEMS) -> str:
    shown = "\n  ".join(problems[:limit])
    more = f"\n  … and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"\n  {shown}{more}"


def read_categories(root: Path | str) -> list[str]:
    """Class names ordered by label index; raises `LayoutError` naming every bad line."""
    names, problems = parse_categories(categories_path(root))
    if problems:
        raise LayoutError(
            f"cannot read the categories of {root}:{format_problems(problems)}", DatasetFix(Path(root), "verify"),
        )
    return names


def read_split(root: Path | str, split: str) -> list[Sample]:
    """The samples of one split; raises `LayoutError` naming every bad line."""
    if split not in SPLITS:
        raise LayoutError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"dataset folder {root} does not exist", DatasetFix(root, "get"))
    if split == "test":
        samples = list_test_images(root)
        if not samples:
            raise LayoutError(f"{images_dir(root) / 'test'} holds no images")
        return samples
    num_classes = len(read_categories(root))
    samples, problems = parse_labels(labels_path(root, split), split, num_classes)
    if problems:
        raise LayoutError(
            f"bad {split} label file in {root}:{format_problems(problems)}\n"
            "Fix or remove these lines.",
            DatasetFix(root, "verify"),
        )
    if not samples:
        raise LayoutError(f"{labels_path(root, split)} lists no images")
    return samples
