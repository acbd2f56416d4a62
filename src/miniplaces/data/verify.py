"""`verify_dataset`: a full check of a dataset folder in the official MiniPlaces layout.

It collects every problem (file and line) rather than stopping at the first: the
categories file, both label files (format, labels in range, duplicates), that every
listed image exists and fully decodes, and the optional unlabelled test split. It
also says whether the sizes are those of the full dataset or of a subset, which is
valid (for example the 300-images-per-class development copy).

Decoding runs in a small thread pool: Pillow releases the GIL while it decodes, and
threads avoid the start-up and pickling cost of processes for 128×128 JPEGs.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from miniplaces.data.dataset import ImageReadError, open_image_checked
from miniplaces.data.layout import (
    IMAGE_SUFFIXES,
    LABELLED_SPLITS,
    categories_path,
    images_dir,
    labels_path,
    list_test_images,
    parse_categories,
    parse_labels,
    read_label_lines,
)

FULL_SIZES = {"train": 100_000, "val": 10_000, "test": 10_000}
FULL_CLASSES = 100
DECODE_CHUNK = 256


@dataclass
class SplitReport:
    """What one split holds: image count and, for labelled splits, images per class."""

    name: str
    images: int = 0
    per_class: dict[int, int] = field(default_factory=dict)
    labelled: bool = True

    @property
    def min_per_class(self) -> int:
        return min(self.per_class.values(), default=0)

    @property
    def max_per_class(self) -> int:
        return max(self.per_class.values(), default=0)

    def per_class_text(self) -> str:
        """`300` when every class has as many images, else `min–max`."""
        low, high = self.min_per_class, self.max_per_class
        return f"{low}" if low == high else f"{low}–{high}"


@dataclass
class VerifyReport:
    """The outcome of `verify_dataset`.

    `problems` make the dataset unsound (each names a file, and a line where one applies);
    `notes` are worth knowing but harmless (e.g. images on disk that no label file lists).
    """

    root: Path
    classes: list[str] = field(default_factory=list)
    splits: dict[str, SplitReport] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    decoded: int = 0
    image_sizes: Counter[tuple[int, int]] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_full(self) -> bool:
        """True when the sizes are those of the official dataset (100 classes, 100,000/10,000/10,000)."""
        return self.num_classes == FULL_CLASSES and all(
            name in self.splits and self.splits[name].images == size for name, size in FULL_SIZES.items()
        )

    def size_description(self) -> str:
        """`full dataset (…)` or `subset: 300 train images per class, …`."""
        if self.is_full:
            return "full dataset (100,000 train / 10,000 val / 10,000 test, 100 classes)"
        parts = []
        for name in LABELLED_SPLITS:
            split = self.splits.get(name)
            if split is None or not split.images:
                parts.append(f"no {name} images")
            else:
                parts.append(f"{split.per_class_text()} {name} images per class")
        test = self.splits.get("test")
        parts.append(f"{test.images:,} test images" if test and test.images else "no test images")
        return "subset: " + ", ".join(parts)

    def summary(self) -> list[str]:
        """Readable lines: split sizes, classes, images per class, subset or full."""
        lines = [f"dataset: {self.root}", f"classes: {self.num_classes}"]
        for name in ("train", "val", "test"):
            split = self.splits.get(name)
            if split is None:
                continue
            if split.labelled:
                lines.append(
                    f"{name}: {split.images:,} images, {split.per_class_text()} per class "
                    f"over {len(split.per_class)} classes"
                )
            else:
                lines.append(f"{name}: {split.images:,} images (unlabelled)")
        if self.image_sizes:
            sizes = ", ".join(f"{w}×{h} ({n:,})" for (w, h), n in self.image_sizes.most_common(3))
            more = f" and {len(self.image_sizes) - 3} more sizes" if len(self.image_sizes) > 3 else ""
            lines.append(f"decoded: {self.decoded:,} images; sizes {sizes}{more}")
        lines.append(self.size_description())
        return lines


def _decode(path: str) -> tuple[int, int] | str:
    """Fully decode one image: its (width, height), or the reason it cannot be read."""
    try:
        with open_image_checked(path) as image:
            image.load()
            return image.size
    except ImageReadError as err:
        # The error names the path; the report names it already, with the line that lists it.
        text = str(err).removeprefix(f"{path}: ").removesuffix("; replace or remove it")
        return text.replace("cannot decode image (", "cannot decode (", 1)
    except FileNotFoundError:
        return "file not found"
    except Image.DecompressionBombError as err:
        return f"refused, too many pixels to decode safely ({err})"
    except (OSError, SyntaxError, ValueError) as err:
        return f"cannot decode ({err})"


def _decode_chunk(paths: list[str]) -> list[tuple[int, int] | str]:
    return [_decode(p) for p in paths]


def decode_all(paths: list[str], workers: int = 2) -> list[tuple[int, int] | str]:
    """Decode every path (in a thread pool when `workers > 1`); results in the order of `paths`."""
    chunks = [paths[i : i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)]
    if workers <= 1 or len(chunks) <= 1:
        results = [_decode_chunk(c) for c in chunks]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_decode_chunk, chunks))
    return [r for chunk in results for r in chunk]


def _line_numbers(path: Path) -> dict[str, int]:
    """relpath → line number in a label file (parse_labels drops bad lines, so it cannot say)."""
    numbers: dict[str, int] = {}
    for lineno, line in enumerate(read_label_lines(path)[0], 1):
        relpath = line.split(" ", 1)[0]
        numbers.setdefault(relpath, lineno)
    return numbers


def _files_on_disk(folder: Path) -> set[str]:
    """Image files under `folder`, relative to `images/` (os.walk: fast on 100,000 files)."""
    found: set[str] = set()
    base = folder.parent
    for dirpath, _, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(base).as_posix()
        found.update(f"{rel}/{name}" for name in filenames if name.lower().endswith(IMAGE_SUFFIXES))
    return found


def verify_dataset(root: Path | str, decode: bool = True, workers: int = 2) -> VerifyReport:
    """Check a dataset folder and report its sizes and every problem.

    Args:
        root: the dataset folder (`images/`, `train.txt`, `val.txt`, `categories.txt`).
        decode: fully decode every image (otherwise only check that the files exist).
        workers: decoding threads.
    """
    root = Path(root)
    report = VerifyReport(root=root)
    if root.exists() and not root.is_dir():
        report.problems.append(f"{root}: a file, not a dataset folder")
        return report
    if not root.is_dir():
        report.problems.append(
            f"{root}: no such folder; download the dataset there or make a synthetic one"
        )
        return report
    images = images_dir(root)
    if not images.is_dir():
        report.problems.append(f"{images}: missing; it should hold train/, val/ (and test/) with the JPEG files")

    report.classes, problems = parse_categories(categories_path(root))
    report.problems.extend(problems)
    # Without a sound categories file, labels can only be checked against the official 100 classes.
    num_classes = report.num_classes or FULL_CLASSES

    to_decode: list[tuple[str, str]] = []  # (relpath, where it is listed)
    for split in LABELLED_SPLITS:
        label_file = labels_path(root, split)
        samples, problems = parse_labels(label_file, split, num_classes)
        report.problems.extend(problems)
        per_class = Counter(s.label for s in samples)
        split_report = SplitReport(split, len(samples), {k: per_class.get(k, 0) for k in range(num_classes)})
        report.splits[split] = split_report
        if not label_file.is_file():
            continue
        lines = _line_numbers(label_file)
        on_disk = _files_on_disk(images / split) if (images / split).is_dir() else set()
        for sample in samples:
            where = f"{label_file.name}:{lines[sample.relpath]}"
            if sample.relpath not in on_disk and not (images / sample.relpath).is_file():
                report.problems.append(f"{images / sample.relpath} ({where}): file not found")
            else:
                to_decode.append((sample.relpath, where))
        listed = {s.relpath for s in samples}
        unlisted = sorted(on_disk - listed)
        if unlisted:
            report.notes.append(
                f"{len(unlisted):,} images under {images / split} are not listed in {label_file.name} "
                f"(e.g. {unlisted[0]}); they are not used"
            )
        empty = [k for k, n in split_report.per_class.items() if n == 0]
        if samples and empty:
            names = [report.classes[k] if k < len(report.classes) else str(k) for k in empty[:5]]
            message = f"{label_file}: no {split} images for {len(empty)} classes (e.g. {', '.join(names)})"
            (report.problems if split == "train" else report.notes).append(message)

    test = list_test_images(root)
    if test:
        report.splits["test"] = SplitReport("test", len(test), labelled=False)
        to_decode.extend((s.relpath, "test split") for s in test)
    else:
        report.notes.append(f"{images / 'test'}: no test images (the unlabelled test split is optional)")

    if decode and to_decode:
        results = decode_all([str(images / relpath) for relpath, _ in to_decode], workers)
        for (relpath, where), result in zip(to_decode, results, strict=True):
            if isinstance(result, str):
                report.problems.append(f"{images / relpath} ({where}): {result}; replace or remove it")
            else:
                report.decoded += 1
                report.image_sizes[result] += 1
    return report
