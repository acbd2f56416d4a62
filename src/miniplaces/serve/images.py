"""Images the page shows: the gallery (val split, a folder, uploads), size checks, PNG/JPEG data URLs."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from miniplaces.errors import MiniPlacesError
from miniplaces.serve.model_service import MAX_ASPECT, folder_images, shrink, val_samples

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # 40 megapixels (predict allows 64): a large photo, ~120 MB while it is decoded
MAX_UPLOADS_KEPT = 32
# What all kept uploads may hold, decoded. Each is kept at the side the largest model resizes it to, so a
# 40-megapixel photo costs ~100 KB, and even a 100:1 strip a few MB.
MAX_UPLOAD_STORE_BYTES = 64 * 2**20
THUMB_SIZE = 112
SOURCES: tuple[str, ...] = ("val", "folder", "upload")
_ID_INDEX = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() accepts "²", which int() refuses
_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-fA-F]+>")
# At most two images decode at once: concurrent large uploads wait instead of multiplying the peak memory.
_DECODING = threading.BoundedSemaphore(2)


class ServeError(MiniPlacesError):
    """A request the server refuses; `status` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_size(name: str, width: int, height: int, *, max_pixels: int = MAX_UPLOAD_PIXELS,
               max_aspect: float = MAX_ASPECT) -> None:
    """Refuse (413) an image too large to decode, or so elongated that the model's resize would be
    (`predict`'s aspect limit): from the header's size, before any pixel is decoded."""
    if width < 1 or height < 1:
        raise ServeError(f"{name} has no pixels ({width}×{height})", 415)
    if width * height > max_pixels:
        raise ServeError(f"{name} has {width}×{height} pixels; at most {max_pixels / 1e6:.0f} megapixels "
                         "are accepted: downscale it first", 413)
    if max(width, height) / min(width, height) > max_aspect:
        raise ServeError(f"{name} is {width}×{height} pixels, {max(width, height) / min(width, height):,.0f} times "
                         f"longer than wide; at most {max_aspect:g} times is accepted: crop it first", 413)


def _reason(err: BaseException, source: bytes | Path) -> str:
    """PIL's message without an object repr or the server's path (the user sees the file's name)."""
    text = _OBJECT_REPR.sub("the file", str(err))
    return text.replace(str(source), "the file") if isinstance(source, Path) else text


def decode_image(source: bytes | Path, name: str, *, max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """An image file (its bytes, or a path) as RGB, or a `ServeError` that says why not (404, 413, 415).

    The size is checked from the header before decoding. Grayscale, palette, RGBA (alpha dropped,
    as `predict` does) and CMYK are converted; an animation gives its first frame.
    """
    try:
        with _DECODING, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                check_size(name, *image.size, max_pixels=max_pixels)
                image.load()
                try:
                    return image.convert("RGB")
                except (OSError, ValueError) as err:
                    raise ServeError(f"{name} has mode {image.mode}, which cannot be converted to RGB; "
                                     "save it as an 8-bit PNG or JPEG", 415) from err
    except ServeError:
        raise
    except FileNotFoundError:
        raise ServeError(f"{name} is no longer on disk", 404) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ServeError(f"{name} has too many pixels to decode safely; downscale it first", 413) from None
    except Image.UnidentifiedImageError:
        raise ServeError(f"{name} is not an image PIL can read; upload a PNG or JPEG", 415) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ServeError(f"{name} cannot be decoded ({_reason(err, source)}); use a PNG or JPEG", 415) from None


def decode_upload(data: bytes, name: str = "upload", *, max_bytes: int = MAX_UPLOAD_BYTES,
                  max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """An uploaded file as an RGB image, or a `ServeError` that says why not (400, 413, 415)."""
    if not data:
        raise ServeError(f"{name} is empty; upload a PNG or JPEG image", 400)
    if len(data) > max_bytes:
        raise ServeError(f"{name} is {len(data) / 2**20:.1f} MB; uploads are limited to {max_bytes / 2**20:.0f} MB",
                         413)
    return decode_image(data, name, max_pixels=max_pixels)


@dataclass(frozen=True)
class GalleryItem:
    """One image the page can pick: `id` is `source:index` (`upload:<hash>` for uploads)."""

    id: str
    name: str
    label: int | None
    path: Path | None = None

    def describe(self, categories: Sequence[str]) -> dict[str, Any]:
        label_name = categories[self.label] if self.label is not None and self.label < len(categories) else None
        return {"id": self.id, "name": self.name, "label": self.label, "label_name": label_name}


class Gallery:
    """The images on offer: the val split of `root`, the images under `folder`, and recent uploads.

    Uploads are kept decoded, shrunk to `keep_side` (the short side the largest model resizes
    to, so that model sees what `predict` shows it): the last `max_uploads`, and no more than
    `max_bytes` in all; the oldest go first.
    """

    def __init__(self, root: Path | str | None = None, folder: Path | str | None = None, *, keep_side: int = 512,
                 max_uploads: int = MAX_UPLOADS_KEPT, max_bytes: int = MAX_UPLOAD_STORE_BYTES) -> None:
        self.categories: list[str] = []
        self.val: list[GalleryItem] = []
        self.folder: list[GalleryItem] = []
        if root is not None:
            samples, self.categories = val_samples(root)
            self.val = [GalleryItem(f"val:{i}", path.name, label, path) for i, (path, label) in enumerate(samples)]
        if folder is not None:
            self.folder = [GalleryItem(f"folder:{i}", str(path.relative_to(folder)), None, path)
                           for i, path in enumerate(folder_images(folder))]
        self.keep_side, self.max_uploads, self.max_bytes = keep_side, max_uploads, max_bytes
        self._uploads: OrderedDict[str, tuple[GalleryItem, Image.Image]] = OrderedDict()
        self._lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"val": len(self.val), "folder": len(self.folder), "upload": len(self._uploads)}

    @property
    def upload_bytes(self) -> int:
        """The bytes the kept uploads hold, decoded."""
        with self._lock:
            return sum(_nbytes(image) for _, image in self._uploads.values())

    def listing(self, source: str, offset: int = 0, limit: int = 60) -> tuple[list[GalleryItem], int]:
        """A page of one source's items and the source's total."""
        if source == "val":
            items = self.val
        elif source == "folder":
            items = self.folder
        elif source == "upload":
            with self._lock:
                items = [item for item, _ in reversed(self._uploads.values())]
        else:
            raise ServeError(f"unknown image source {source!r}; choose one of {', '.join(SOURCES)}")
        return items[max(0, offset): max(0, offset) + max(0, limit)], len(items)

    def add_upload(self, data: bytes, name: str) -> GalleryItem:
        """Check, shrink and keep an uploaded image; the oldest uploads go when the store is full."""
        name = Path(name.replace("\\", "/")).name[:120] or "upload"
        image = shrink(decode_upload(data, name), self.keep_side)
        key = "upload:" + hashlib.sha256(data).hexdigest()[:16]
        item = GalleryItem(key, name, None)
        with self._lock:
            self._uploads[key] = (item, image)
            self._uploads.move_to_end(key)
            total = sum(_nbytes(kept) for _, kept in self._uploads.values())
            while len(self._uploads) > 1 and (len(self._uploads) > self.max_uploads or total > self.max_bytes):
                total -= _nbytes(self._uploads.popitem(last=False)[1][1])
        return item

    def _find(self, image_id: Any) -> tuple[GalleryItem, Image.Image | None]:
        """The item and, for an upload, its kept image (looked up together, so eviction cannot come between)."""
        if not isinstance(image_id, str):
            raise ServeError(f"image must be an id string such as val:0; got {type(image_id).__name__}")
        source, _, index = image_id.partition(":")
        if source == "upload":
            with self._lock:
                if image_id in self._uploads:
                    return self._uploads[image_id]
            raise ServeError(f"upload {image_id[:60]!r} is no longer kept; upload it again", 404)
        items = {"val": self.val, "folder": self.folder}.get(source)
        if items is None or not _ID_INDEX.fullmatch(index) or int(index) >= len(items):
            raise ServeError(f"no image {image_id[:60]!r}; ids look like val:0, folder:3 or upload:<hash>", 404)
        return items[int(index)], None

    def item(self, image_id: Any) -> GalleryItem:
        return self._find(image_id)[0]

    def open(self, image_id: Any) -> tuple[GalleryItem, Image.Image]:
        """The item and its RGB image (a file's size checked before it is decoded)."""
        item, image = self._find(image_id)
        if image is not None:
            return item, image
        assert item.path is not None
        return item, decode_image(item.path, item.name)

    def thumbnail(self, image_id: Any) -> bytes:
        """A JPEG of at most THUMB_SIZE pixels a side."""
        _, image = self.open(image_id)
        image = image.copy()
        image.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()


def _nbytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


def to_uint8(array: np.ndarray | torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor or (H, W, 3) array in [0, 1] → (H, W, 3) uint8."""
    if isinstance(array, torch.Tensor):
        array = array.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)


def png_data_url(array: np.ndarray | torch.Tensor) -> str:
    """A `data:image/png;base64,…` URL of an image in [0, 1] ((3, H, W) tensor or (H, W, 3) array)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(array)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
