"""A batched loader over the decoded cache: batches are index slices of a permutation,
augmentation is tensor work on batches (at most one resize call per image), airbench style.

The training augmentation follows the study's `train_transform()` on whole batches:
horizontal flip (p = 0.5), random resized crop (area 0.25–1, aspect 0.8–1.2) and rotation
±15° drawn as one affine map per image, then colour jitter 0.15 (brightness, contrast,
saturation) as one per-image colour matrix. A crop without rotation that shrinks is made as
torchvision's RandomResizedCrop and validation make theirs: the image resized (bilinear,
antialiased) so that the crop spans the output side, then a block copied out
(`resized_crop_boxes`). Any other crop is an affine sampling grid (`F.grid_sample`, bilinear,
black outside the image as `RandomRotation` fills), on the image first resized so that the
warp does not shrink it (`prefilter_sides`). Differences from the per-sample pipeline:
bilinear interpolation only (not a random choice of nearest/bilinear/bicubic), crop boxes
rounded to whole pixels of the resized image, and the jitter applies brightness → contrast →
saturation in a fixed order with one clamp at the end. Validation batches follow
`val_transform()`: the whole batch is resized to 144/128 of the output side, then
centre-cropped. Training batches come out at `set_side`'s side (progressive resizing) directly.

Optionally (`auto_augment`, `random_erasing`) training batches then go through the batch
operations of `miniplaces.data.batch_augment`: TrivialAugmentWide / RandAugment on a few
slices of the batch, each with its own draw, and per-image random erasing.

On CUDA the whole uint8 array is uploaded once and everything runs on the GPU; on the CPU
the array stays memory-mapped and each batch is gathered, then augmented in chunks that
fit the caches.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from miniplaces.data.batch_augment import auto_augment_groups, auto_augment_transform, batch_rng, random_erasing
from miniplaces.data.cache import DEFAULT_IMAGE_SIZE, build_cache, open_cache
from miniplaces.data.transforms import resize_for

# ITU-R 601 luma, as torchvision's rgb_to_grayscale (used by its contrast and saturation).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
# Images per augmentation step on the CPU: intermediates (~1 MB per image and pass) stay in the caches,
# measured faster than one whole-batch step (docs/benchmarks.md).
CPU_CHUNK = 16
# Training crops that shrink are prefiltered to sides in steps of this many pixels (`prefilter_sides`).
PREFILTER_STEP = 8


def _seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (so seeds 0 and 1 of epochs 1 and 0 differ)."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def sample_augmentation(
    batch: int,
    generator: torch.Generator,
    *,
    flip: float = 0.5,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (0.8, 1.2),
    degrees: float = 15.0,
    jitter: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random parameters for a batch: affine `theta` (B, 2, 3) and colour factors (B, 3).

    `theta` maps output to input coordinates in [-1, 1] (as `F.affine_grid`): a crop of
    relative width w and height h centred at (cx, cy), rotated by the angle and mirrored
    when flipped. The colour factors are brightness, contrast and saturation.
    """
    u = torch.rand(batch, 6, generator=generator, device=generator.device)
    sign = torch.where(u[:, 0] < flip, -1.0, 1.0)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 2])
    w = (area * aspect).sqrt().clamp(max=1.0)  # fractions of the side
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = (2 * u[:, 3] - 1) * (1 - w)  # keeps the (unrotated) crop inside the image
    cy = (2 * u[:, 4] - 1) * (1 - h)
    angle = (2 * u[:, 5] - 1) * math.radians(degrees)
    theta = affine_theta(w, h, cx, cy, angle, sign)
    colour = 1 - jitter + 2 * jitter * torch.rand(batch, 3, generator=generator, device=generator.device)
    return theta, colour


def affine_theta(w: torch.Tensor, h: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, angle: torch.Tensor,
                 sign: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) maps of output to input coordinates: input = (cx, cy) + R(angle) · diag(sign·w, h) · output.

    A crop of relative width `w` and height `h` centred at (cx, cy) (all in [-1, 1] units),
    rotated by `angle` (radians) and mirrored where `sign` is -1.
    """
    cos, sin = angle.cos(), angle.sin()
    return torch.stack(
        [torch.stack([cos * w * sign, -sin * h, cx], 1), torch.stack([sin * w * sign, cos * h, cy], 1)], 1
    )


def _base_grid(size: int, device: torch.device) -> torch.Tensor:
    # Pixel centres in [-1, 1] (align_corners=False), homogeneous: (1, size*size, 3) of (x, y, 1).
    lin = (torch.arange(size, dtype=torch.float32, device=device) * 2 + 1) / size - 1
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)], -1).reshape(1, size * size, 3)


def prefilter_sides(theta: torch.Tensor, source: int, out_size: int, step: int = PREFILTER_STEP) -> torch.Tensor:
    """Per image, the side (int64, B) to resize the source image to before the warp, so it shrinks by ≤ 1.

    A crop of relative width w and height h sampled onto `out_size` pixels reads w·S/O source pixels per
    output pixel; above 1, bilinear sampling aliases. Resized (antialiased) to T = O / max(w, h) first, the
    crop spans about O pixels and is sampled at most 1:1. T is rounded up to a multiple of `step`, so a
    batch has a few distinct sides (each one batched resize), and is `source` itself where no shrink is needed.
    """
    w, h = theta[:, :, 0].norm(dim=1), theta[:, :, 1].norm(dim=1)  # the crop's relative width and height
    side = torch.ceil(out_size / torch.maximum(w, h).clamp(min=1e-6) / step - 1e-4) * step
    return side.clamp(max=source).to(torch.int64)


def _shrink(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (B, 3, H, W) (a view of channels-last memory) resized to `size`, bilinear and antialiased.

    On the CPU it stays uint8 and channels-last: torch's vectorised antialiased kernel for that layout runs
    several times faster than on floats (docs/benchmarks.md) and rounds to whole levels, as torchvision's
    Resize of a uint8 image does. Other devices have no uint8 kernel: there it is float.
    """
    if images.device.type != "cpu":
        images = images.float()
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def _warp(u8: torch.Tensor, theta: torch.Tensor, base: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (C, S, S, 3) warped by `theta` onto float (C, 3, O, O) in [0, 255], prefiltered where it shrinks."""
    c = u8.shape[0]
    # One bmm instead of F.affine_grid, which is several times slower on the CPU.
    grid = torch.bmm(base.expand(c, -1, -1), theta.transpose(1, 2)).view(c, size, size, 2)
    # The grid is in [-1, 1] units, the same at any side: each group of equal prefilter sides is resized as
    # one batch and warped with its own rows of the grid.
    sides = prefilter_sides(theta, u8.shape[1], size)
    warped = torch.empty(c, 3, size, size, device=u8.device)
    for side in sides.unique().tolist():
        rows = (sides == side).nonzero().flatten()
        whole = len(rows) == c
        source = (u8 if whole else u8.index_select(0, rows)).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        if side < u8.shape[1]:
            source = _shrink(source, (side, side))
        # One pass converts dtype and layout; NCHW input samples several times faster than NHWC.
        image = torch.empty(len(rows), 3, side, side, device=u8.device).copy_(source)
        sampled = F.grid_sample(image, grid if whole else grid.index_select(0, rows), mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # (rows, 3, O, O)
        if whole:
            return sampled
        warped.index_copy_(0, rows, sampled)
    return warped


def resized_crop_boxes(theta: torch.Tensor, source: int, out_size: int) -> torch.Tensor:
    """Per image, (height T_h, width T_w, top, left, flip) as int64 (B, 5): resized to T_h×T_w (antialiased), the
    source holds the crop as the `out_size`² block at (top, left), mirrored where flip is 1; T_h = -1 where the crop
    is not one (a rotation, or a crop narrower than `out_size` source pixels, which is upsampled, not shrunk).

    That is torchvision's RandomResizedCrop up to the rounding of the crop's box to whole pixels of the resized
    image, and validation's own resize-then-crop: the output pixels are filtered exactly as validation's are.
    """
    w, h = theta[:, 0, 0].abs(), theta[:, 1, 1]
    flip = (theta[:, 0, 0] < 0).to(torch.int64)
    tw = torch.round(out_size / w.clamp(min=1e-6)).to(torch.int64)
    th = torch.round(out_size / h.clamp(min=1e-6)).to(torch.int64)
    left = torch.round((theta[:, 0, 2] + 1) / 2 * tw - out_size / 2).to(torch.int64)
    top = torch.round((theta[:, 1, 2] + 1) / 2 * th - out_size / 2).to(torch.int64)
    left = torch.minimum(left.clamp(min=0), tw - out_size)
    top = torch.minimum(top.clamp(min=0), th - out_size)
    axis_aligned = (theta[:, 0, 1] == 0) & (theta[:, 1, 0] == 0) & (h > 0)
    usable = axis_aligned & (tw <= source) & (th <= source) & (tw >= out_size) & (th >= out_size)
    return torch.stack([torch.where(usable, th, -1), tw, top, left, flip], 1)


def _augment_into(u8: torch.Tensor, theta: torch.Tensor, colour: torch.Tensor, base: torch.Tensor,
                  out: torch.Tensor) -> None:
    """Crop or warp + colour-jitter uint8 (C, S, S, 3) images into float `out` (C, 3, O, O) in [0, 1].

    A crop that shrinks without rotation is resized and cropped as validation is (`resized_crop_boxes`):
    each image resized to its own side (bilinear, antialiased), then an O×O block copied out. Measured on
    the fast recipe, that is worth 1.85 points of top-1 over a warp of a prefiltered image at ~1:1, whose
    bilinear interpolation at fractional positions blurs a second time (docs/benchmarks.md). Any other
    crop is an affine warp (`F.grid_sample`); where that warp shrinks, the image is first resized to
    `prefilter_sides` (bilinear, antialiased), so it does not alias.
    """
    c, size = out.shape[0], out.shape[-1]
    x = torch.empty(c, 3, size, size, device=u8.device)
    # Contrast blends towards the mean grey of the whole image (as ColorJitter, which runs before the crop);
    # the colour map itself runs after the warp, so rotated-in corners are near black rather than black.
    gray = torch.tensor(GRAY_WEIGHTS, device=u8.device)
    mean_gray = u8.sum((1, 2), dtype=torch.float32) / (u8.shape[1] * u8.shape[2]) @ gray  # (C,)
    boxes = resized_crop_boxes(theta, u8.shape[1], size)
    for i, (th, tw, top, left, flip) in enumerate(boxes.tolist()):
        if th < 0:
            continue
        image = u8[i].permute(2, 0, 1).unsqueeze(0)  # (1, 3, S, S) view of channels-last memory
        if (th, tw) != image.shape[-2:]:
            image = _shrink(image, (th, tw))
        block = image[0, :, top : top + size, left : left + size]
        x[i].copy_(block.flip(-1) if flip else block)
    warp = (boxes[:, 0] < 0).nonzero().flatten()
    if len(warp):
        x.index_copy_(0, warp, _warp(u8.index_select(0, warp), theta.index_select(0, warp), base, size))
    # Brightness b, contrast k, saturation s as one colour matrix per image (the /255 folded in):
    #   out = s·k·b·x + (1−s)·k·b·gray(x) + (1−k)·b·mean_gray,  gray(x) = w·x
    b, k, s = colour.unbind(1)
    eye = torch.eye(3, device=x.device)
    weights = gray.expand(3, 3)  # every row w: each channel gets w·x
    matrix = ((s * k * b).view(c, 1, 1) * eye + ((1 - s) * k * b).view(c, 1, 1) * weights) / 255  # (C, 3, 3)
    offset = ((1 - k) * b * mean_gray / 255).view(c, 1, 1)
    torch.baddbmm(offset, matrix, x.view(c, 3, size * size), out=out.view(c, 3, size * size))
    out.clamp_(0.0, 1.0)


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator,
    out_size: int | None = None,
    chunk: int | None = None,
    **params: float | tuple[float, float],
) -> torch.Tensor:
    """Augment a uint8 batch (B, S, S, 3) into float (B, 3, O, O) in [0, 1] on `images.device`.

    Args:
        images: uint8 pixels, channels last (as stored in the cache).
        generator: source of randomness (on the CPU or on `images.device`).
        out_size: side O of the output (default S).
        chunk: images per step (default: the whole batch on a GPU, 16 on the CPU).
        params: `flip`, `scale`, `ratio`, `degrees`, `jitter` of `sample_augmentation`.
    """
    batch, size = images.shape[0], out_size or images.shape[1]
    theta, colour = sample_augmentation(batch, generator, **params)  # type: ignore[arg-type]
    return _augment_sampled(images, theta.to(images.device), colour.to(images.device), size, chunk)


def _augment_sampled(images: torch.Tensor, theta: torch.Tensor, colour: torch.Tensor, size: int,
                     chunk: int | None) -> torch.Tensor:
    batch = images.shape[0]
    chunk = chunk or (batch if images.device.type != "cpu" else CPU_CHUNK)
    base = _base_grid(size, images.device)
    out = _empty_batch((batch, 3, size, size), images.device)
    for start in range(0, batch, chunk):
        stop = min(batch, start + chunk)
        _augment_into(images[start:stop], theta[start:stop], colour[start:stop], base, out[start:stop])
    return out


def _empty_batch(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """An uninitialised float32 tensor; on the CPU a large one lives on transparent huge pages.

    A fresh 50 MB batch otherwise costs ~12,800 page faults on first write, about 30 ms per
    batch here; with 2 MB pages it is a few dozen.
    """
    numel = math.prod(shape)
    if device.type != "cpu" or numel * 4 < 1 << 23 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, device=device)
    buffer = mmap.mmap(-1, numel * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buffer.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # THP disabled: plain pages, still correct
        pass
    return torch.frombuffer(buffer, dtype=torch.float32).view(shape)  # the tensor keeps the mapping alive


def to_float(images: torch.Tensor, out_size: int | None = None) -> torch.Tensor:
    """uint8 (B, S, S, 3) → float (B, 3, O, O) in [0, 1]; resized (bilinear, antialiased) when O ≠ S."""
    x = _empty_batch((images.shape[0], 3, images.shape[1], images.shape[2]), images.device)
    x.copy_(images.permute(0, 3, 1, 2)).div_(255)  # (B, 3, S, S): dtype and layout in one pass
    if out_size is not None and out_size != images.shape[1]:
        # Antialiasing only matters when shrinking; upsampling gives the same weights on a faster kernel.
        shrink = out_size < images.shape[1]
        x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", antialias=shrink, align_corners=False)
    return x.clamp_(0.0, 1.0)


def val_batch(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (B, S, S, 3) → float (B, 3, O, O) as `val_transform(O, resize_for(O))` makes each image.

    The whole batch is resized to `resize_for(O)` (bilinear, antialiased), then centre-cropped
    to O with torchvision's `CenterCrop` offset, round((R − O) / 2). Torchvision rounds the
    resized uint8 image to whole levels; this stays in float, so the two differ by < 1/255.
    """
    resize = resize_for(image_size)
    x = to_float(images, resize)  # (B, 3, R, R)
    top = int(round((resize - image_size) / 2.0))
    return x[:, :, top : top + image_size, top : top + image_size].contiguous()  # (B, 3, O, O)


class CachedLoader:
    """Batches `(x, y)` from a decoded cache, as a `DataLoader` would give them to the engine.

    `x` is float32 (B, 3, S, S) in [0, 1] on `device`, `y` int64 (B,). The order is a
    permutation drawn from (seed, epoch): call `set_epoch(epoch)` before each epoch (as with
    a `DistributedSampler`) and a resumed run sees the same batches; without it each new
    iteration takes the next epoch. With `world_size > 1` each rank takes every
    `world_size`-th index of the same permutation; with `pad` (the default for training) the
    permutation is first padded by wrapping around so that every rank gets the same number
    of samples (as `DistributedSampler(drop_last=False)`); without it (the default for
    validation) every image is seen exactly once over the ranks, whose counts differ by ≤ 1.

    Args:
        images: uint8 (N, S, S, 3), a numpy array or memory map, or a tensor.
        labels: int (N,).
        batch_size: images per batch (per rank).
        train: augment (flip, crop, rotation, colour jitter); otherwise the val transform (`val_batch`:
            resize to image_size·144/128, centre crop image_size), as the per-sample pipeline validates.
        device: where batches are made; on CUDA the whole uint8 array is uploaded once.
        shuffle: permute each epoch (default: `train`).
        drop_last: drop the last incomplete batch (default: `train`).
        seed: with the epoch, fixes permutation and augmentation.
        image_size: side of the output images (the crop is resized to it); `set_side` changes it for training
            batches (progressive resizing).
        rank, world_size: this process's shard.
        pad: equal shards by repeating a few images (default: `train`).
        num_threads: torch threads while a batch is made on the CPU; `None` (default) keeps torch's
            setting, the faster one on an idle machine. On a CPU shared with other jobs, 1 avoids
            waiting for a descheduled thread, by a large factor (docs/benchmarks.md).
        auto_augment: "none", "trivialaugment" or "randaugment", on training batches after the
            study's augmentation (`batch_augment.auto_augment_groups`).
        random_erasing: chance per training image of an erased rectangle (`batch_augment.random_erasing`).
        crop_min_area, rotation, color_jitter: strength of the study's augmentation (smallest crop area
            fraction, ± degrees, colour factor range); the defaults are the study's.
        val_crop: validation batches are centre-cropped to image_size (default); without it they are the
            whole images resized to `resize_for(image_size)`, for multi-crop test-time augmentation.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        device: str | torch.device = "cpu",
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        seed: int = 0,
        image_size: int = DEFAULT_IMAGE_SIZE,
        rank: int = 0,
        world_size: int = 1,
        pad: bool | None = None,
        num_threads: int | None = None,
        auto_augment: str = "none",
        random_erasing: float = 0.0,
        crop_min_area: float = 0.25,
        rotation: float = 15.0,
        color_jitter: float = 0.15,
        val_crop: bool = True,
    ) -> None:
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype not in (np.uint8, torch.uint8):
            raise ValueError(f"images must be uint8 (N, S, S, 3), got {tuple(images.shape)} {images.dtype}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size ≥ 1 and 0 ≤ rank < world_size, got {batch_size}, {rank}, {world_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.train = train
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.seed = seed
        self.image_size = image_size
        self.rank, self.world_size = rank, world_size
        self.num_threads = num_threads
        self.auto_augment = auto_augment_transform(auto_augment)
        self.random_erasing = random_erasing
        self.strength = {"scale": (crop_min_area, 1.0), "degrees": rotation, "jitter": color_jitter}
        self.val_crop = val_crop
        self.epoch = 0
        self.num_images = len(images)
        self.pad = train if pad is None else pad
        # Samples of this rank per epoch.
        self.num_samples = math.ceil((self.num_images - (0 if self.pad else rank)) / world_size)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(self.device)
        if self.device.type == "cpu":
            self.images = images.numpy() if isinstance(images, torch.Tensor) else images
            self._buffer = np.empty((batch_size, *images.shape[1:]), dtype=np.uint8)  # reused: never handed out
        else:
            self.images = _upload(images, self.device)
        self.side = image_size

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch the next iteration uses (its permutation and augmentation)."""
        self.epoch = epoch

    def set_side(self, side: int | None) -> None:
        """Make training batches at `side` (progressive resizing's side of the epoch; None: `image_size`).

        The crop is sampled straight at that side, prefiltered where it shrinks: each pixel is resampled once.
        """
        self.side = self.image_size if side is None else side

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch`, in order (int64, length `num_samples`)."""
        n = self.num_images
        if self.shuffle:
            generator = torch.Generator().manual_seed(_seed(self.seed, epoch))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        total = math.ceil(n / self.world_size) * self.world_size if self.pad else n
        if total > n:  # pad by wrapping around, as DistributedSampler does
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1  # a plain `for` over epochs still sees fresh permutations
        order = self.indices(epoch)
        generator = torch.Generator().manual_seed(_seed(self.seed, epoch, self.rank, 1))
        for i in range(len(self)):
            # Sorted within the batch: memory-map reads go forwards, and a batch is a set anyway.
            batch_idx = order[i * self.batch_size : (i + 1) * self.batch_size].sort().values
            with _torch_threads(self.num_threads if self.device.type == "cpu" else None):
                batch = self._make_batch(batch_idx, generator)
                if self.train and (self.auto_augment is not None or self.random_erasing > 0):
                    batch = (self._extra(batch[0], batch_rng(self.seed, epoch, self.rank, i, 2)), batch[1])
            yield batch

    def _make_batch(self, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cpu":
            pixels = torch.from_numpy(np.take(self.images, idx.numpy(), axis=0, out=self._buffer[: len(idx)]))
        else:
            pixels = self.images.index_select(0, idx.to(self.device))
        labels = self.labels[idx.to(self.labels.device)]
        if not self.train:
            if not self.val_crop:
                return to_float(pixels, resize_for(self.image_size)), labels
            return val_batch(pixels, self.image_size), labels
        theta, colour = sample_augmentation(len(idx), generator, **self.strength)  # type: ignore[arg-type]
        x = _augment_sampled(pixels, theta.to(self.device), colour.to(self.device), self.side, None)
        return x, labels


    def _extra(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """The optional batch augmentations, after the study's: automatic augmentation, then erasing."""
        if self.auto_augment is not None:
            x = auto_augment_groups(x, self.auto_augment, rng)
        if self.random_erasing > 0:
            x = random_erasing(x, self.random_erasing, rng)
        return x


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch threads, then restore the previous number."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _upload(images: np.ndarray | torch.Tensor, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """Copy uint8 images to `device` in slices, so a memory map is never fully in host RAM twice."""
    if isinstance(images, torch.Tensor):
        return images.to(device)
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(images), chunk):
        out[start : start + chunk] = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk])).to(device)
    return out


def cached_loader(
    root: Path | str,
    split: str,
    batch_size: int,
    *,
    train: bool,
    device: str | torch.device = "cpu",
    image_size: int = DEFAULT_IMAGE_SIZE,
    cache_size: int | None = None,
    cache_dir: Path | str | None = None,
    build: bool = True,
    **kwargs: int | bool | str | float | None,
) -> CachedLoader:
    """A `CachedLoader` over `split` of `root`, building (or reusing) its cache first when `build`.

    The cache stores images of side `cache_size` (default `image_size`); batches come out at `image_size`.

    Extra keyword arguments (`shuffle`, `drop_last`, `seed`, `rank`, `world_size`, `auto_augment`,
    `random_erasing`, `crop_min_area`, `rotation`, `color_jitter`, `val_crop`) go to `CachedLoader`.
    """
    stored = image_size if cache_size is None else cache_size
    if build:
        build_cache(root, split, image_size=stored, cache_dir=cache_dir)
    cache = open_cache(root, split, image_size=stored, cache_dir=cache_dir)
    return CachedLoader(cache.images, cache.labels, batch_size, train=train, device=device,
                        image_size=image_size, **kwargs)  # type: ignore[arg-type]
