"""A simple Vision Transformer whose blocks use global or window attention.

image (B, 3, H, W) in [0, 1] → normalise → patch embedding (conv, stride = kernel = patch)
→ tokens (B, N, D) + optional learnable absolute position embedding
→ `depth` pre-norm blocks: x + DropPath(Attn(LN(x))), x + DropPath(MLP(LN(x)))
→ final LayerNorm → mean over tokens → linear head.

Blocks listed in `window_blocks` (0-based indices) attend within non-overlapping
`window_size`² windows of the token grid (default: half the grid side, 4 on the 8×8 grid of a
128-px image); the others attend globally. The position embedding and the windows are made
for `img_size`, the training image side: `create_model("vit", image_size=S)` sets it. The study's
"window 4 on blocks 1 and 3" of the depth-4 model counts blocks from 1, so the
default is `window_blocks=(0, 2)`: window, global, window, global — local mixing
first, each followed by a global block (the ViTDet pattern). Drop-path rates
rise linearly from 0 to `drop_path_rate` over depth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from miniplaces.layers import Attention, DropPath, Mlp, Normalize, PatchEmbed
from miniplaces.models.base import Classifier
from miniplaces.models.registry import ModelCard, register_model


class Block(nn.Module):
    """Pre-norm transformer block; `window_size=None` means global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        window_size: int | None = None,
        qkv_bias: bool = True,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, window_size=window_size, qkv_bias=qkv_bias, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), grid_size))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class TokenEncoder(nn.Module):
    """Normalised image → final-normed tokens `(B, N, D)` and the grid size: the trunk of a ViT."""

    def __init__(
        self,
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 192,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        window_size: int | None = None,
        window_blocks: Sequence[int] = (0, 2),
        pos_embed: bool = True,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        bad = [i for i in window_blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"window_blocks {tuple(window_blocks)} must be 0-based block indices below depth {depth}")
        if img_size < patch_size or img_size % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch_size}; "
                             f"use a multiple such as {max(1, round(img_size / patch_size)) * patch_size}")
        self.embed_dim = embed_dim
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        side = self.grid_size[0]
        window_size = max(1, side // 2) if window_size is None else window_size
        if window_blocks and window_size >= side:
            # A window as large as the grid is global attention: refuse rather than silently lose locality.
            raise ValueError(f"window_size {window_size} covers the whole {side}×{side} token grid of a "
                             f"{img_size}-px image (patch {patch_size}), so the window blocks would attend globally; "
                             "use a smaller window_size or a larger image size")
        self.window_size = window_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dim)) if pos_embed else None
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, window_size if i in window_blocks else None, qkv_bias, drop_rate,
                  rates[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def position_embedding(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """The learnt embedding, resampled (bicubic) when the input grid differs from the trained one."""
        assert self.pos_embed is not None
        if grid_size == self.grid_size:
            return self.pos_embed
        pos = self.pos_embed.view(1, *self.grid_size, -1).permute(0, 3, 1, 2)  # (1, D, Gh, Gw)
        pos = F.interpolate(pos, size=grid_size, mode="bicubic", align_corners=False)
        return pos.flatten(2).transpose(1, 2)  # (1, N, D)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x, grid = self.patch_embed(x)  # (B, N, D)
        if self.pos_embed is not None:
            x = x + self.position_embedding(grid)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x, grid)
        return self.norm(x), grid


def init_transformer_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated-normal linear weights (std 0.02), zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class VisionTransformer(Classifier, nn.Module):
    """Simple ViT: no class token, mean pooling over tokens, linear head.

    Args:
        num_classes: output classes (0: no head, `forward` returns pooled features).
        drop_rate: dropout after the position embedding, in attention/MLP outputs and before the head.
        drop_path_rate: stochastic depth of the last block (linear from 0 at the first).
        encoder_args: the trunk's (`TokenEncoder`): img_size (training image side, a multiple of
            patch_size; other sides work at inference, the position embedding is resampled), patch_size,
            embed_dim, depth, num_heads, mlp_ratio, window_size (in tokens; default half the token grid's
            side), window_blocks (0-based indices of the window-attention blocks; the others are global),
            pos_embed, qkv_bias.
    """

    def __init__(self, num_classes: int = 100, *, drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 **encoder_args: Any) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.normalize = Normalize()
        # The trunk's arguments (img_size, patch_size, embed_dim, …) are `TokenEncoder`'s, written once there.
        self.encoder = TokenEncoder(drop_rate=drop_rate, drop_path_rate=drop_path_rate, **encoder_args)
        self.num_features = self.encoder.embed_dim
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        init_transformer_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.encoder(self.normalize(x))
        return tokens  # (B, N, D)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return self.head_drop(features.mean(dim=1))  # (B, D)

    def init_head(self, head: nn.Linear) -> None:
        init_transformer_weights(head)


@register_model("vit", "simple ViT: patch 16, width 192, depth 4, 4 heads, window 4 on blocks 1 and 3 (1-based)",
                ModelCard(family="vit", size_argument="img_size"))
def vit(*, num_classes: int = 100, **kwargs: Any) -> VisionTransformer:
    # The window is left to the encoder: half the token grid, 4 at 128 px.
    model_args = dict(img_size=128, patch_size=16, embed_dim=192, depth=4, num_heads=4, window_blocks=(0, 2),
                      drop_path_rate=0.1)
    return VisionTransformer(num_classes=num_classes, **dict(model_args, **kwargs))
