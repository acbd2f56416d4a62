"""Augmentations of whole batches (B, 3, H, W) in [0, 1]: MixUp / CutMix, automatic augmentation,
random erasing, progressive resizing. Tensor work on the batch's device, no PIL, no per-sample loader.

Each draws its randomness from a seed given by the caller (run seed, epoch, step, rank), never
from the global RNG, so an epoch replays exactly when a run resumes.

- `MixCut`: timm's `Mixup` in batch mode. One weight λ per batch; each image is mixed with the
  batch reversed (image i with image B−1−i). The targets become probabilities (B, classes),
  which `nn.CrossEntropyLoss` takes as they are; its `label_smoothing` then smooths them exactly
  as timm's `mixup_target` does (on = 1 − ε + ε/C, off = ε/C), so the two combine correctly.
- `auto_augment_groups`: TrivialAugmentWide / RandAugment. torchvision's v2 transforms applied to
  a batch tensor draw ONE operation and magnitude for the whole batch; here the batch is cut into
  `groups` slices and each slice gets its own draw. The trade-off: within a batch only `groups`
  distinct (operation, magnitude) pairs occur instead of one per image; across batches every
  image still sees the full distribution, and the cost is `groups` vectorised calls per batch
  instead of B per-image calls.
- `random_erasing`: each image, with probability p, gets one rectangle (area 2–33 %, aspect
  0.3–3.3, log-uniform, as torchvision's `RandomErasing`) set to 0. Vectorised as a mask; where
  torchvision retries a box that does not fit ten times, the box here is clipped to the image.
- `progressive_size`: progressive resizing's schedule of training sides. The loaders make each epoch's
  batches at its side directly (`CachedLoader.set_side`, the per-sample transform at that side), so each
  pixel is resampled once; `resize_batch` (bilinear, antialiased) resizes a finished batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

AUTO_AUGMENTS = ("none", "trivialaugment", "randaugment")
AUGMENT_GROUPS = 8  # slices of a cache-loader batch, each with its own automatic-augmentation draw
PROGRESSIVE_STEP = 8  # progressive sides are multiples of this (FFCV rounds to 32 at ImageNet sizes)


def batch_rng(*parts: int) -> np.random.Generator:
    """A numpy generator fixed by integers (run seed, epoch, step, rank, purpose)."""
    return np.random.default_rng([p & 0xFFFFFFFF for p in parts])


class MixCut:
    """MixUp / CutMix of a batch with its reverse; `(x, y, rng)` → mixed x and soft targets (B, classes).

    Args:
        num_classes: width of the targets.
        mixup_alpha, cutmix_alpha: Beta(α, α) parameters; 0 disables that mix.
        prob: chance that a batch is mixed at all (else its targets are one-hot).
        switch_prob: with both on, chance of CutMix rather than MixUp.
    """

    def __init__(self, num_classes: int, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 prob: float = 1.0, switch_prob: float = 0.5) -> None:
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("MixCut needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        one_hot = F.one_hot(y, self.num_classes).to(torch.float32)  # (B, C)
        if rng.random() >= self.prob:
            return x, one_hot
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        if cutmix:
            x, lam = self._cutmix(x, rng)
        else:
            lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
            x = x * lam + x.flip(0) * (1.0 - lam)
        return x, one_hot * lam + one_hot.flip(0) * (1.0 - lam)

    def _cutmix(self, x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
        """Paste one box of the reversed batch into every image; λ is the share of the image left."""
        lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        h, w = x.shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        ch, cw = int(h * ratio), int(w * ratio)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
        return x, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)  # λ of the box actually pasted (clipped at the edges)


def auto_augment_transform(kind: str) -> v2.Transform | None:
    """The v2 transform of `auto_augment` (torchvision's defaults), or None for "none"."""
    if kind == "none":
        return None
    if kind == "trivialaugment":
        return v2.TrivialAugmentWide()
    if kind == "randaugment":
        return v2.RandAugment()
    raise ValueError(f"unknown automatic augmentation {kind!r}; use one of {', '.join(AUTO_AUGMENTS)}")


def auto_augment_groups(x: torch.Tensor, transform: v2.Transform, rng: np.random.Generator,
                        groups: int = AUGMENT_GROUPS) -> torch.Tensor:
    """Apply `transform` to `groups` slices of the float batch `x` (B, 3, H, W), one random draw per slice.

    The v2 transforms draw from torch's global RNG: each slice runs under its own seed from `rng`,
    and the global state is restored afterwards.
    """
    out = torch.empty_like(x)
    bounds = np.linspace(0, x.shape[0], min(groups, x.shape[0]) + 1).round().astype(int)
    seeds = rng.integers(0, 2**62, len(bounds) - 1)
    with torch.random.fork_rng(devices=[]):
        for (start, stop), seed in zip(zip(bounds[:-1], bounds[1:], strict=True), seeds, strict=True):
            torch.manual_seed(int(seed))
            out[start:stop] = transform(x[start:stop])
    return out


def random_erasing(x: torch.Tensor, p: float, rng: np.random.Generator, *, scale: tuple[float, float] = (0.02, 0.33),
                   ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Erase (set to 0) one random rectangle in each image of `x` (B, C, H, W) with probability `p`."""
    b, _, h, w = x.shape
    u = torch.from_numpy(rng.random((b, 5))).to(x.device, torch.float32)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * h * w
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1])
    eh = (area * aspect).sqrt().round().clamp(1, h)
    ew = (area / aspect).sqrt().round().clamp(1, w)
    top = ((h - eh + 1) * u[:, 2]).floor()
    left = ((w - ew + 1) * u[:, 3]).floor()
    rows = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w)
    inside = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
              & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)))  # (B, H, W)
    erase = inside & (u[:, 4] < p).view(b, 1, 1)
    return x.masked_fill(erase.unsqueeze(1), 0.0)


def progressive_size(epoch: int, *, start_size: int | None, end_size: int, start_epoch: int = 0,
                     end_epoch: int) -> int:
    """The training side in `epoch` (0-based): `start_size` until `start_epoch`, rising linearly to
    `end_size` at `end_epoch`, rounded down to a multiple of `PROGRESSIVE_STEP` (never below start_size)."""
    if start_size is None or epoch >= end_epoch:
        return end_size
    if epoch <= start_epoch:
        return start_size
    t = (epoch - start_epoch) / (end_epoch - start_epoch)
    size = start_size + t * (end_size - start_size)
    return min(end_size, max(start_size, int(size // PROGRESSIVE_STEP) * PROGRESSIVE_STEP))


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` (B, C, H, W) resized to (B, C, size, size), bilinear and antialiased; itself when already that size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
