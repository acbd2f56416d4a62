"""Multi-scale-patch ViT: three patch sizes in parallel, pooled and concatenated.

image in [0, 1] → normalise → three branches, each a `TokenEncoder` (patch embedding,
position embedding, pre-norm blocks, final norm) followed by a mean over its tokens;
the three pooled vectors are concatenated → linear head.

Window sizes are scaled to each branch's token grid so that a window always covers half
the image side, as the ViT's window 4 does on its 8×8 grid: at 128 px, window 16 on the
32×32 grid of patch 4, 8 on the 16×16 grid of patch 8, 4 on the 8×8 grid of patch 16; at
64 px, 8, 4 and 2 (`window_sizes=None`, the default, computes them for `img_size`).

Compute on 128×128 (multiply-adds, counted with FlopCounterMode; the plain `vit` is 127 M):

| branch   | grid  | width | heads | blocks               | MACs   |
|----------|-------|-------|-------|----------------------|--------|
| patch 4  | 32×32 | 64    | 2     | 1: window 16         |  87 M  |
| patch 8  | 16×16 | 128   | 4     | 2: window 8, global  | 128 M  |
| patch 16 | 8×8   | 192   | 4     | 2: window 4, global  |  68 M  |
| total    |       |       |       |                      | 283 M  |

The fine branch sees 1024 tokens: global attention there would cost 134 M MACs per
block for the attention product alone, so it gets one narrow window-attention block —
enough to mix local texture — while the coarse branches, with 16× and 64× fewer tokens,
afford width and a global block each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from miniplaces.layers import Normalize
from miniplaces.models.base import Classifier
from miniplaces.models.registry import ModelCard, register_model
from miniplaces.models.vit import TokenEncoder, init_transformer_weights


class MultiScaleViT(Classifier, nn.Module):
    """Parallel ViT branches over different patch sizes; per-branch hyper-parameters are sequences.

    Args:
        num_classes: output classes (0: no head).
        img_size: training image side (each branch's position embedding is sized for it).
        patch_sizes, embed_dims, depths, num_heads: one entry per branch.
        window_sizes: one entry per branch, in tokens; None → half of each branch's token grid.
        window_blocks: per branch, the 0-based indices of its window-attention blocks.
        mlp_ratio, pos_embed, drop_rate: shared by all branches.
        drop_path_rate: per branch, rising linearly from 0 over that branch's depth.
    """

    def __init__(
        self,
        num_classes: int = 100,
        img_size: int = 128,
        patch_sizes: Sequence[int] = (4, 8, 16),
        embed_dims: Sequence[int] = (64, 128, 192),
        depths: Sequence[int] = (1, 2, 2),
        num_heads: Sequence[int] = (2, 4, 4),
        window_sizes: Sequence[int | None] | None = None,
        window_blocks: Sequence[Sequence[int]] = ((0,), (0,), (0,)),
        mlp_ratio: float = 4.0,
        pos_embed: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        if window_sizes is None:
            window_sizes = (None,) * len(patch_sizes)  # each encoder takes half its grid
        per_branch = (patch_sizes, embed_dims, depths, num_heads, window_sizes, window_blocks)
        if len({len(values) for values in per_branch}) != 1:
            raise ValueError("patch_sizes, embed_dims, depths, num_heads, window_sizes and window_blocks "
                             "need one entry per branch")
        self.num_classes = num_classes
        self.num_features = sum(embed_dims)
        self.normalize = Normalize()
        self.branches = nn.ModuleList(
            TokenEncoder(img_size, patch, 3, dim, depth, heads, mlp_ratio, window, tuple(blocks), pos_embed,
                         drop_rate=drop_rate, drop_path_rate=drop_path_rate)
            for patch, dim, depth, heads, window, blocks in zip(*per_branch, strict=True)
        )
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        init_transformer_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of every branch, concatenated: `(B, sum(embed_dims))`.

        The branches' token grids differ in size, so pooling happens here rather than in the head.
        """
        x = self.normalize(x)
        return torch.cat([branch(x)[0].mean(dim=1) for branch in self.branches], dim=1)  # (B, ΣD)

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        return self.head_drop(features)  # already pooled per branch: (B, ΣD)

    def init_head(self, head: nn.Linear) -> None:
        init_transformer_weights(head)


@register_model("msvit", "multi-scale-patch ViT: branches of patch 4/8/16 (widths 64/128/192), pooled and concatenated",
                ModelCard(family="vit", size_argument="img_size"))
def msvit(*, num_classes: int = 100, **kwargs: Any) -> MultiScaleViT:
    # Windows are left to the encoders: half of each branch's grid (16/8/4 at 128 px).
    model_args = dict(img_size=128, patch_sizes=(4, 8, 16), embed_dims=(64, 128, 192), depths=(1, 2, 2),
                      num_heads=(2, 4, 4), window_blocks=((0,), (0,), (0,)), drop_path_rate=0.1)
    return MultiScaleViT(num_classes=num_classes, **dict(model_args, **kwargs))
