"""Images the page shows: the gallery (val split, a folder, uploads), upload checks, PNG/JPEG data URLs."""

from __future__ import annotations

import base64
import hashlib
import io
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
from miniplaces.serve.model_service import folder_images, load_rgb, val_samples

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # 40 megapixels: a large photo, far below what would exhaust memory
MAX_UPLOADS_KEPT = 32
THUMB_SIZE = 112
SOURCES: tuple[str, ...] = ("val", "folder", "upload")


class ServeError(MiniPlacesError):
    """A request the server refuses; `status` is the HTTP status it answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, name: str = "upload", *, max_bytes: int = MAX_UPLOAD_BYTES,
                  max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """An uploaded file as an RGB image, or a `ServeError` that says why not (413, 415).

    Grayscale, palette, RGBA (alpha dropped, as `predict` does) and CMYK are converted; an
    animation gives its first frame.
    """
    if not data:
        raise ServeError(f"{name} is empty; upload a PNG or JPEG image", 400)
    if len(data) > max_bytes:
        raise ServeError(f"{name} is {len(data) / 2**20:.1f} MB; uploads are limited to {max_bytes / 2**20:.0f} MB",
                         413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ServeError(f"{name} has {width}×{height} pixels; at most {max_pixels / 1e6:.0f} megapixels "
                                 "are accepted: downscale it first", 413)
            image.load()
    except ServeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ServeError(f"{name} has too many pixels ({err}); downscale it first", 413) from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ServeError(f"{name} is not an image PIL can read ({err}); upload a PNG or JPEG", 415) from err
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as err:
        raise ServeError(f"{name} has mode {image.mode}, which cannot be converted to RGB; "
                         "save it as an 8-bit PNG or JPEG", 415) from err


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
    """The images on offer: the val split of `root`, the images under `folder`, and recent uploads."""

    def __init__(self, root: Path | str | None = None, folder: Path | str | None = None) -> None:
        self.categories: list[str] = []
        self.val: list[GalleryItem] = []
        self.folder: list[GalleryItem] = []
        if root is not None:
            samples, self.categories = val_samples(root)
            self.val = [GalleryItem(f"val:{i}", path.name, label, path) for i, (path, label) in enumerate(samples)]
        if folder is not None:
            self.folder = [GalleryItem(f"folder:{i}", str(path.relative_to(folder)), None, path)
                           for i, path in enumerate(folder_images(folder))]
        self._uploads: OrderedDict[str, tuple[GalleryItem, Image.Image]] = OrderedDict()
        self._lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"val": len(self.val), "folder": len(self.folder), "upload": len(self._uploads)}

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
        """Check and keep an uploaded image (the last `MAX_UPLOADS_KEPT`, in memory)."""
        image = decode_upload(data, name)
        key = "upload:" + hashlib.sha256(data).hexdigest()[:16]
        item = GalleryItem(key, Path(name).name or "upload", None)
        with self._lock:
            self._uploads[key] = (item, image)
            self._uploads.move_to_end(key)
            while len(self._uploads) > MAX_UPLOADS_KEPT:
                self._uploads.popitem(last=False)
        return item

    def item(self, image_id: str) -> GalleryItem:
        source, _, index = str(image_id).partition(":")
        if source == "upload":
            with self._lock:
                if image_id in self._uploads:
                    return self._uploads[image_id][0]
            raise ServeError(f"upload {image_id!r} is no longer kept; upload it again", 404)
        items = {"val": self.val, "folder": self.folder}.get(source)
        if items is None or not index.isdigit() or int(index) >= len(items):
            raise ServeError(f"no image {image_id!r}; ids look like val:0, folder:3 or upload:<hash>", 404)
        return items[int(index)]

    def open(self, image_id: str) -> tuple[GalleryItem, Image.Image]:
        """The item and its RGB image."""
        item = self.item(image_id)
        if item.path is None:
            with self._lock:
                return item, self._uploads[image_id][1]
        try:
            return item, load_rgb(item.path)
        except MiniPlacesError as err:
            raise ServeError(str(err), 422) from err

    def thumbnail(self, image_id: str) -> bytes:
        """A JPEG of at most THUMB_SIZE pixels a side."""
        _, image = self.open(image_id)
        image = image.copy()
        image.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()


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
