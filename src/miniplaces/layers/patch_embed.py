"""Image → tokens: a convolution with stride = kernel = patch size."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Cut an image into non-overlapping `patch_size` squares and project each to `embed_dim`.

    Returns the tokens `(B, N, D)` in row-major grid order and the grid size `(Gh, Gw)`.
    Image sides must be multiples of the patch size (no silent cropping).
    """

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 192) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}×{W} is not a multiple of the patch size {self.patch_size}")
        x = self.proj(x)  # (B, D, Gh, Gw)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid  # (B, Gh·Gw, D)
