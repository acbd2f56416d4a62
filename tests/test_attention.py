"""Attention, drop path, MLP and patch embedding against references written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from miniplaces.layers import Attention, DropPath, Mlp, PatchEmbed, drop_path, window_partition, window_reverse


def reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d)V per head, with the module's own projections, written out by hand."""
    B, N, D = x.shape
    h, d = attn.num_heads, D // attn.num_heads
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(D, dim=-1)
    q, k, v = (t.reshape(B, N, h, d).transpose(1, 2) for t in (q, k, v))  # (B, h, N, d)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(B, N, D)
    return out @ attn.proj.weight.T + attn.proj.bias


def twin(attn: Attention, window_size: int | None) -> Attention:
    other = Attention(attn.qkv.in_features, attn.num_heads, window_size=window_size).double()
    other.load_state_dict(attn.state_dict())
    return other


def test_global_attention_equals_reference() -> None:
    attn = Attention(16, num_heads=4).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    torch.testing.assert_close(attn(x, (3, 4)), reference_attention(attn, x))


@pytest.mark.parametrize("grid,window", [((4, 6), 2), ((5, 7), 3), ((3, 10), 4)])
def test_window_attention_equals_global_attention_per_window(grid: tuple[int, int], window: int) -> None:
    H, W = grid
    local = Attention(8, num_heads=2, window_size=window).double()
    glob = twin(local, None)
    x = torch.randn(2, H * W, 8, dtype=torch.float64)
    out = local(x, grid)
    # Every window, clipped at the grid edge (the padding must be invisible), attended on its own.
    covered = torch.zeros(H * W, dtype=torch.bool)
    for top in range(0, H, window):
        for left in range(0, W, window):
            rows = range(top, min(top + window, H))
            cols = range(left, min(left + window, W))
            idx = torch.tensor([r * W + c for r in rows for c in cols])
            expected = glob(x[:, idx], (len(rows), len(cols)))
            torch.testing.assert_close(out[:, idx], expected)
            covered[idx] = True
    assert covered.all()
    if H % window or W % window:
        # Not the same as global attention: the windows really restrict who attends to whom.
        assert not torch.allclose(out, glob(x, grid))


@pytest.mark.parametrize("grid,window", [((4, 4), 4), ((5, 7), 8)])
def test_window_covering_the_grid_equals_global(grid: tuple[int, int], window: int) -> None:
    local = Attention(8, num_heads=2, window_size=window).double()
    x = torch.randn(3, grid[0] * grid[1], 8, dtype=torch.float64)
    torch.testing.assert_close(local(x, grid), twin(local, None)(x, grid))


def test_padded_windows_have_finite_gradients() -> None:
    attn = Attention(8, num_heads=2, window_size=3)
    x = torch.randn(2, 5 * 7, 8, requires_grad=True)
    attn(x, (5, 7)).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_window_partition_round_trip_and_mask() -> None:
    x = torch.randn(2, 5 * 7, 4)
    windows, mask = window_partition(x, (5, 7), (3, 3))
    assert windows.shape == (2 * 2 * 3, 9, 4)
    assert mask is not None and mask.shape == (12, 1, 1, 9)
    assert int(mask.sum()) == 2 * 5 * 7  # exactly the real tokens are attendable
    torch.testing.assert_close(window_reverse(windows, (5, 7), (3, 3)), x)
    assert window_partition(x.new_zeros(2, 36, 4), (6, 6), (3, 3))[1] is None


def test_drop_path_scales_kept_samples_and_is_identity_in_eval() -> None:
    x = torch.ones(4000, 3, 5)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.flatten(1)
    kept = per_sample[:, 0] != 0
    # Each sample is dropped or kept whole; kept ones are scaled by 1/keep.
    assert torch.all((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1))
    assert 0.70 < kept.float().mean().item() < 0.80
    module = DropPath(0.25).eval()
    assert module(x) is x
    assert DropPath(0.0).train()(x) is x
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_mlp_is_fc_gelu_fc() -> None:
    mlp = Mlp(6, 24)
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))


def test_patch_embed_tokens_follow_the_grid() -> None:
    embed = PatchEmbed(patch_size=4, in_chans=3, embed_dim=10)
    x = torch.randn(2, 3, 8, 12)
    tokens, grid = embed(x)
    assert grid == (2, 3) and tokens.shape == (2, 6, 10)
    # Token (i, j) (row-major) is the projection of patch x[..., 4i:4i+4, 4j:4j+4].
    patch = x[:, :, 4:8, 8:12]
    expected = F.conv2d(patch, embed.proj.weight, embed.proj.bias).flatten(1)
    torch.testing.assert_close(tokens[:, 1 * 3 + 2], expected)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        embed(torch.randn(1, 3, 10, 12))
