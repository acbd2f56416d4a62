"""Multi-head self-attention over groups of tokens cut from an H×W token grid.

One module, two ways of cutting the grid into groups (as in lucidrains' max_vit):

- global (`window_size=None`): the whole grid is one group;
- window (`window_size=w`): non-overlapping w×w windows. When the grid does not
  divide, it is padded at the bottom and right up to a multiple of w; padded tokens
  are masked as keys, so every real token attends exactly to the real tokens of its
  window, and the padded outputs are dropped. A window larger than the grid is
  clamped to the grid, which makes it global attention.

Inside a group: a fused QKV projection, softmax(QKᵀ/√d)V per head by
`F.scaled_dot_product_attention`, and an output projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def window_partition(
    x: torch.Tensor, grid_size: tuple[int, int], window: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cut tokens `(B, H·W, D)` into windows `(B·nW, wh·ww, D)`, padding the grid when needed.

    Returns the windows and a key mask `(B·nW, 1, 1, wh·ww)` (True = real token), or None without padding.
    """
    B, N, D = x.shape
    H, W = grid_size
    wh, ww = window
    if N != H * W:
        raise ValueError(f"{N} tokens do not form a {H}×{W} grid")
    pad_h, pad_w = (-H) % wh, (-W) % ww
    x = x.view(B, H, W, D)
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, D), zeros at the bottom/right
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // wh, wh, Wp // ww, ww, D).permute(0, 1, 3, 2, 4, 5)  # (B, nH, nW, wh, ww, D)
    windows = x.reshape(-1, wh * ww, D)  # (B·nH·nW, wh·ww, D)
    if not (pad_h or pad_w):
        return windows, None
    real = torch.zeros(Hp, Wp, dtype=torch.bool, device=x.device)
    real[:H, :W] = True
    real = real.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)  # (nW, wh·ww)
    mask = real[None].expand(B, -1, -1).reshape(-1, 1, 1, wh * ww)  # (B·nW, 1, 1, wh·ww)
    return windows, mask


def window_reverse(windows: torch.Tensor, grid_size: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
    """Inverse of `window_partition`: windows `(B·nW, wh·ww, D)` → tokens `(B, H·W, D)`, padding dropped."""
    H, W = grid_size
    wh, ww = window
    Hp, Wp = H + (-H) % wh, W + (-W) % ww
    nH, nW = Hp // wh, Wp // ww
    D = windows.shape[-1]
    x = windows.view(-1, nH, nW, wh, ww, D).permute(0, 1, 3, 2, 4, 5)  # (B, nH, wh, nW, ww, D)
    x = x.reshape(-1, Hp, Wp, D)[:, :H, :W]  # (B, H, W, D)
    return x.reshape(-1, H * W, D)


class Attention(nn.Module):
    """Multi-head self-attention, global or over non-overlapping windows of the token grid.

    Args:
        dim: token width D (a multiple of `num_heads`).
        num_heads: number of heads; each has D / num_heads channels.
        window_size: None for global attention, or the side w of square windows.
        qkv_bias: bias in the fused QKV projection.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if window_size is not None and window_size < 1:
            raise ValueError(f"window_size must be a positive int or None, got {window_size}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attend(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention within each group: `(G, T, D)` → `(G, T, D)`; `key_mask` `(G, 1, 1, T)`, True = attend."""
        G, T, D = x.shape
        qkv = self.qkv(x).view(G, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, G, nh, T, hs)
        q, k, v = qkv.unbind(0)  # each (G, nh, T, hs)
        dropout = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout)  # (G, nh, T, hs)
        x = x.transpose(1, 2).reshape(G, T, D)  # (G, T, D)
        return self.proj_drop(self.proj(x))

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Tokens `(B, H·W, D)` in row-major grid order → `(B, H·W, D)`."""
        if self.window_size is None:
            return self.attend(x)
        H, W = grid_size
        window = (min(self.window_size, H), min(self.window_size, W))
        windows, mask = window_partition(x, grid_size, window)  # (B·nW, wh·ww, D)
        return window_reverse(self.attend(windows, mask), grid_size, window)

    def extra_repr(self) -> str:
        mode = "global" if self.window_size is None else f"window={self.window_size}"
        return f"num_heads={self.num_heads}, {mode}"
