"""The batched cache loader: batches, order, sharding, and augmentation checked against torch/torchvision."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from miniplaces.bench.data import run_data_benchmark
from miniplaces.data.loader import (
    CachedLoader,
    _augment_into,
    _augment_sampled,
    _base_grid,
    affine_theta,
    augment_batch,
    cached_loader,
    prefilter_sides,
    resized_crop_boxes,
    sample_augmentation,
    val_batch,
)
from miniplaces.data.transforms import resize_for, val_transform

N, S = 50, 16


@pytest.fixture()
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images; label i for image i, so a batch's labels tell which images it holds."""
    images = np.random.default_rng(0).integers(0, 256, (N, S, S, 3), dtype=np.uint8)
    return images, np.arange(N, dtype=np.int64)


def plain(images: np.ndarray, idx: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(images[idx.numpy()]).permute(0, 3, 1, 2).float() / 255


def collect(loader: CachedLoader) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    return xs, ys


@pytest.mark.parametrize("train", [True, False])
def test_batches_shapes_dtype_range_len(arrays: tuple[np.ndarray, np.ndarray], train: bool) -> None:
    loader = CachedLoader(*arrays, batch_size=16, train=train, image_size=S)
    xs, ys = collect(loader)
    assert len(loader) == len(xs) == (3 if train else 4)  # train drops the last 2, val keeps them
    for x, y in zip(xs, ys, strict=True):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.device.type == "cpu"
        assert x.shape[1:] == (3, S, S) and x.shape[0] == y.shape[0]
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert [len(y) for y in ys] == ([16] * 3 if train else [16, 16, 16, 2])


def test_output_size_differs_from_cache(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    for train in (True, False):
        x, _ = next(iter(CachedLoader(*arrays, batch_size=8, train=train, image_size=12)))
        assert x.shape == (8, 3, 12, 12)


def test_every_index_once_per_epoch(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    for train in (True, False):
        loader = CachedLoader(*arrays, batch_size=16, train=train, drop_last=False, shuffle=True, image_size=S)
        for epoch in range(2):
            loader.set_epoch(epoch)
            _, ys = collect(loader)
            assert sorted(torch.cat(ys).tolist()) == list(range(N))


def test_order_is_a_function_of_seed_and_epoch(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    a = CachedLoader(*arrays, batch_size=10, train=True, seed=3, image_size=S)
    b = CachedLoader(*arrays, batch_size=10, train=True, seed=3, image_size=S)
    a.set_epoch(5)
    b.set_epoch(5)
    (xa, ya), (xb, yb) = collect(a), collect(b)
    assert all(torch.equal(p, q) for p, q in zip(ya + xa, yb + xb, strict=True))  # same images, same augmentation
    b.set_epoch(6)
    assert not torch.equal(torch.cat(collect(b)[1]), torch.cat(ya))
    c = CachedLoader(*arrays, batch_size=10, train=True, seed=4, image_size=S)
    c.set_epoch(5)
    assert not torch.equal(torch.cat(collect(c)[1]), torch.cat(ya))
    # Without set_epoch each iteration moves on to the next epoch.
    d = CachedLoader(*arrays, batch_size=10, train=True, seed=3, image_size=S)
    first, second = torch.cat(collect(d)[1]), torch.cat(collect(d)[1])
    assert not torch.equal(first, second)
    d.set_epoch(0)
    assert torch.equal(torch.cat(collect(d)[1]), first)


def val_oracle(images: np.ndarray, idx: torch.Tensor, size: int) -> torch.Tensor:
    """The per-sample pipeline's validation images: torchvision's val_transform on each uint8 image."""
    transform = val_transform(size, resize_for(size))
    return torch.stack([transform(torch.from_numpy(images[i]).permute(2, 0, 1)) for i in idx.tolist()])


@pytest.mark.parametrize("size", [S, 12])
def test_val_is_in_order_and_matches_val_transform(arrays: tuple[np.ndarray, np.ndarray], size: int) -> None:
    images, labels = arrays
    xs, ys = collect(CachedLoader(images, labels, batch_size=16, train=False, image_size=size))
    assert torch.cat(ys).tolist() == list(range(N))
    for x, y in zip(xs, ys, strict=True):
        expected = val_oracle(images, y, size)
        assert x.shape == expected.shape == (len(y), 3, size, size)
        # torchvision rounds the resized uint8 image to whole levels; the batched path stays in float.
        assert (x - expected).abs().max() <= 2 / 255
        # Not merely close to the unresized image: the resize and crop happened (S → 18 → crop 16).
        if size == S:
            assert (x - plain(images, y)).abs().max() > 0.1


@pytest.mark.parametrize("size", [8, 24])
def test_val_batch_centre_crop_offset_matches_torchvision(size: int) -> None:
    # Cached side = resize_for(size), so no resize: margins 1 and 3 are odd and must be split as CenterCrop does.
    side = resize_for(size)
    assert (side - size) % 2 == 1
    images = torch.randint(0, 256, (2, side, side, 3), dtype=torch.uint8)
    expected = TF.center_crop(images.permute(0, 3, 1, 2), [size, size]).float() / 255
    assert torch.equal(val_batch(images, size), expected)


def test_train_augmentation_changes_images(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    x, y = next(iter(CachedLoader(images, labels, batch_size=32, train=True, image_size=S)))
    per_image = (x - plain(images, y)).abs().mean((1, 2, 3))
    assert (per_image > 0.02).all()


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharding_covers_the_data_with_equal_counts(arrays: tuple[np.ndarray, np.ndarray], world_size: int) -> None:
    shards = []
    for rank in range(world_size):
        loader = CachedLoader(*arrays, batch_size=8, train=True, drop_last=False, seed=1, image_size=S,
                              rank=rank, world_size=world_size)
        loader.set_epoch(2)
        shards.append(torch.cat(collect(loader)[1]).tolist())
        assert len(loader) == math.ceil(math.ceil(N / world_size) / 8)
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == math.ceil(N / world_size)
    merged = sum(shards, [])
    assert set(merged) == set(range(N)) and len(merged) - N == -N % world_size  # only the padding repeats


def test_validation_shards_see_every_image_once() -> None:
    images = np.zeros((N, 4, 4, 3), dtype=np.uint8)
    shards = []
    for rank in range(3):
        loader = CachedLoader(images, np.arange(N), batch_size=8, train=False, image_size=4, rank=rank, world_size=3)
        shards.append(torch.cat(collect(loader)[1]).tolist())
        assert len(loader) == math.ceil(len(shards[-1]) / 8) and loader.num_samples == len(shards[-1])
    assert sorted(sum(shards, [])) == list(range(N)) and [len(s) for s in shards] == [17, 17, 16]


def identity_params(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ones, zeros = torch.ones(batch), torch.zeros(batch)
    return ones, zeros, ones, zeros


def warp(images: np.ndarray, theta: torch.Tensor, colour: torch.Tensor | None = None, size: int = S) -> torch.Tensor:
    u8 = torch.from_numpy(images)
    out = torch.empty(len(images), 3, size, size)
    colour = torch.ones(len(images), 3) if colour is None else colour
    _augment_into(u8, theta, colour, _base_grid(size, u8.device), out)
    return out


def test_identity_warp_is_exact_and_flip_mirrors(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images = arrays[0][:4]
    ones, zeros, _, _ = identity_params(4)
    same = warp(images, affine_theta(ones, ones, zeros, zeros, zeros, ones))
    torch.testing.assert_close(same, plain(images, torch.arange(4)), rtol=0, atol=1e-6)
    mirrored = warp(images, affine_theta(ones, ones, zeros, zeros, zeros, -ones))
    torch.testing.assert_close(mirrored, plain(images, torch.arange(4)).flip(-1), rtol=0, atol=1e-6)


def test_rotation_and_crop_match_torch_oracles(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images = arrays[0][:4]
    x = plain(images, torch.arange(4))
    ones, zeros, _, _ = identity_params(4)
    quarter = warp(images, affine_theta(ones, ones, zeros, zeros, torch.full((4,), math.pi / 2), ones))
    torch.testing.assert_close(quarter, torch.rot90(x, 1, dims=(-2, -1)), rtol=0, atol=1e-5)
    # A centred half-size crop, scaled back to S: bilinear interpolation of the middle block (away from
    # the crop's border, where interpolate clamps to the block and the warp reads the pixels beyond it).
    half = warp(images, affine_theta(ones / 2, ones / 2, zeros, zeros, zeros, ones))
    expected = F.interpolate(x[..., S // 4 : 3 * S // 4, S // 4 : 3 * S // 4], size=(S, S), mode="bilinear",
                             align_corners=False)
    torch.testing.assert_close(half[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], rtol=0, atol=1e-5)
    # The same crop at the left edge (centre x = -0.5) and matching F.affine_grid's convention.
    theta = affine_theta(ones / 2, ones / 2, -ones / 2, zeros, zeros, ones)
    expected = F.grid_sample(x, F.affine_grid(theta, (4, 3, S, S), align_corners=False), align_corners=False)
    torch.testing.assert_close(warp(images, theta), expected, rtol=0, atol=1e-5)


def test_colour_jitter_matches_torchvision() -> None:
    # Mid-range pixels, so torchvision's clamps between its steps never bite.
    images = np.random.default_rng(1).integers(70, 180, (6, S, S, 3), dtype=np.uint8)
    colour = torch.tensor([[0.85, 1.15, 0.9], [1.1, 0.9, 1.15], [1.0, 1.0, 1.0],
                           [0.9, 0.85, 0.85], [1.15, 1.15, 1.15], [1.0, 0.9, 1.1]])
    ones, zeros, _, _ = identity_params(6)
    got = warp(images, affine_theta(ones, ones, zeros, zeros, zeros, ones), colour)
    x = plain(images, torch.arange(6))
    for i, (b, k, s) in enumerate(colour.tolist()):
        ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[i], b), k), s)
        torch.testing.assert_close(got[i], ref, rtol=0, atol=2e-5)


def test_flip_probability_is_about_half() -> None:
    images = np.zeros((4000, 8, 8, 3), dtype=np.uint8)
    images[:, :, 4:] = 255  # bright right half
    generator = torch.Generator().manual_seed(0)
    x = augment_batch(torch.from_numpy(images), generator, scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0.0,
                      jitter=0.0)
    left_bright = x[:, :, :, :4].mean((1, 2, 3)) > 0.5
    assert torch.equal(left_bright, x[:, :, :, 4:].mean((1, 2, 3)) < 0.5)  # each image is one or the other
    assert 0.46 < left_bright.float().mean().item() < 0.54


def test_sampled_parameters_stay_in_range() -> None:
    theta, colour = sample_augmentation(5000, torch.Generator().manual_seed(0))
    w = theta[:, :, 0].norm(dim=1)  # rotation keeps lengths: |column 0| = w, |column 1| = h
    h = theta[:, :, 1].norm(dim=1)
    assert 0.25 - 1e-4 <= (w * h).min() and (w * h).max() <= 1 + 1e-4
    free = (w < 1 - 1e-6) & (h < 1 - 1e-6)  # crops not clamped to the full side keep their aspect ratio
    assert free.float().mean() > 0.5 and (w / h)[free].min() >= 0.8 - 1e-4 and (w / h)[free].max() <= 1.2 + 1e-4
    assert (theta[:, 0, 2].abs() <= 1 - w + 1e-6).all() and (theta[:, 1, 2].abs() <= 1 - h + 1e-6).all()
    angle = torch.atan2(-theta[:, 0, 1], theta[:, 1, 1])
    assert angle.abs().max() <= math.radians(15) + 1e-5 and angle.abs().max() > math.radians(14)
    assert colour.min() >= 0.85 and colour.max() <= 1.15 and colour.std() > 0.05


def test_cached_loader_builds_the_cache(synth_root: Path, tmp_path: Path) -> None:
    loader = cached_loader(synth_root, "val", 8, train=False, device="cpu", image_size=32, cache_dir=tmp_path)
    assert len(loader) == 2 and (tmp_path / "val-32.images.npy").is_file()
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64 and 0 <= y.min() and y.max() < 4


def test_num_threads_applies_while_making_batches_only(arrays: tuple[np.ndarray, np.ndarray],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = CachedLoader._make_batch

    def spy(self: CachedLoader, idx: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(torch.get_num_threads())
        return real(self, idx, generator)

    monkeypatch.setattr(CachedLoader, "_make_batch", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        collect(CachedLoader(*arrays, batch_size=16, train=True, image_size=S, num_threads=1))
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
        collect(CachedLoader(*arrays, batch_size=16, train=True, image_size=S))  # default: torch's setting
        assert seen[3:] == [2, 2, 2]
    finally:
        torch.set_num_threads(before)


def test_rejects_wrong_arrays(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = arrays
    with pytest.raises(ValueError, match="uint8"):
        CachedLoader(images.astype(np.float32), labels, 8, train=True)
    with pytest.raises(ValueError, match="labels"):
        CachedLoader(images, labels[:-1], 8, train=True)


def test_data_benchmark_rows(synth_root: Path, tmp_path: Path) -> None:
    rows = run_data_benchmark(synth_root, batches=1, batch_size=8, warmup=1, workers=0, image_size=32,
                              devices=["cpu"], cache_dir=tmp_path)
    assert rows[0]["ratio"] == 1.0 and rows[0]["loader"].startswith("per-sample DataLoader")
    assert [r["images"] for r in rows] == [8] * len(rows) and all(r["images_per_s"] > 0 for r in rows)
    assert any("train augmentation, 1 thread" in r["loader"] for r in rows)
    assert any("no augmentation" in r["loader"] for r in rows)
    assert rows[1]["cache_build_s"] > 0 and (tmp_path / "train-32.images.npy").is_file()


def test_progressive_side_makes_batches_at_that_side(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    # Each image one flat colour: without rotation every training pixel is its image's colour, at any side.
    colours = np.random.default_rng(2).integers(0, 256, (N, 1, 1, 3), dtype=np.uint8)
    images = np.broadcast_to(colours, (N, S, S, 3)).copy()
    loader = CachedLoader(images, arrays[1], 10, train=True, image_size=S, rotation=0.0, color_jitter=0.0)
    loader.set_side(8)
    x, y = next(iter(loader))
    assert x.shape == (10, 3, 8, 8)
    expected = torch.from_numpy(colours[y.numpy(), 0, 0]).float().div(255).view(10, 3, 1, 1)
    torch.testing.assert_close(x, expected.expand_as(x), rtol=0, atol=1e-5)
    loader.set_side(None)  # back to image_size
    assert next(iter(loader))[0].shape == (10, 3, S, S)


def _stripes(side: int = 128, period: int = 3, count: int = 2) -> np.ndarray:
    """Vertical stripes: one bright column in every `period` (the pattern a 2:1 shrink aliases worst)."""
    row = np.where(np.arange(side) % period == 0, 255, 0).astype(np.uint8)
    return np.broadcast_to(row.reshape(1, 1, side, 1), (count, side, side, 3)).copy()


def test_training_resize_is_antialiased_like_validation() -> None:
    # A training batch with no augmentation but the resize (validation's centred crop, 64 of 72, from a
    # 128 px cache) equals the validation transform: within half a level (0.5/255) of `val_batch` (the training
    # prefilter rounds its resize to whole uint8 levels, `val_batch` stays in float) and within one level of
    # torchvision's val_transform (which also rounds to uint8).
    images, out = _stripes(), 64
    b = len(images)
    ones, zeros = torch.ones(b), torch.zeros(b)
    theta = affine_theta(ones * out / resize_for(out), ones * out / resize_for(out), zeros, zeros, zeros, ones)
    assert prefilter_sides(theta, 128, out).tolist() == [resize_for(out)] * b
    x = torch.empty(b, 3, out, out)
    _augment_into(torch.from_numpy(images), theta, torch.ones(b, 3), _base_grid(out, torch.device("cpu")), x)
    val = val_batch(torch.from_numpy(images), out)
    torch.testing.assert_close(x, val, rtol=0, atol=0.5 / 255 + 1e-5)
    reference = torch.stack([val_transform(out, resize_for(out))(torch.from_numpy(i).permute(2, 0, 1))
                             for i in images])
    torch.testing.assert_close(x, reference, rtol=0, atol=1 / 255 + 1e-5)
    # The stripes' column std: the antialiased value, far from the aliased 0.34 of sampling without a prefilter.
    column_std = x[0, 0].mean(0).std().item()
    assert abs(column_std - val[0, 0].mean(0).std().item()) < 1e-4 and column_std < 0.15
    grid = torch.bmm(_base_grid(out, torch.device("cpu")).expand(b, -1, -1), theta.transpose(1, 2)).view(b, out, out, 2)
    aliased = F.grid_sample(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, grid, align_corners=False)
    assert aliased[0, 0].mean(0).std().item() > 0.3
    # The whole image onto 64 px: the antialiased resize's 0.061, not the aliased 0.24.
    theta = affine_theta(ones, ones, zeros, zeros, zeros, ones)
    _augment_into(torch.from_numpy(images), theta, torch.ones(b, 3), _base_grid(out, torch.device("cpu")), x)
    resized = F.interpolate(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, size=(out, out),
                            mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(x, resized, rtol=0, atol=0.5 / 255 + 1e-5)
    assert abs(x[0, 0].mean(0).std().item() - 0.061) < 0.005


def test_prefilter_sides_follow_the_crop() -> None:
    ones, zeros = torch.ones(3), torch.zeros(3)
    w = torch.tensor([1.0, 0.5, 0.3])
    theta = affine_theta(w, w * 0.9, zeros, zeros, zeros, ones)
    # the whole image onto 64 px: 64; half of it: 128 (the source, no resize); 0.3 of it: above the source
    assert prefilter_sides(theta, 128, 64).tolist() == [64, 128, 128]
    assert prefilter_sides(theta, 128, 48).tolist() == [48, 96, 128]


def test_resized_crop_boxes_cover_shrinking_axis_aligned_crops_only() -> None:
    # Whole image onto 64 px; 0.75 × 0.5 at the right edge, mirrored; 0.3 wide (38 source px < 64): upsampled;
    # and a rotated crop: the last two are warped, not cropped.
    w = torch.tensor([1.0, 0.75, 0.3, 0.8])
    h = torch.tensor([1.0, 0.5, 0.3, 0.8])
    theta = affine_theta(w, h, torch.tensor([0.0, 0.25, 0.0, 0.0]), torch.zeros(4), torch.tensor([0.0, 0, 0, 0.1]),
                         torch.tensor([1.0, -1, 1, 1]))
    boxes = resized_crop_boxes(theta, 128, 64).tolist()
    assert boxes[0] == [64, 64, 0, 0, 0]
    # 64 / 0.75 = 85.3 → 85 wide, 128 high; the centre at 5/8 of the width: left round(53.1 − 32) = 21
    assert boxes[1] == [128, 85, 32, 21, 1]
    assert boxes[2][0] == -1 and boxes[3][0] == -1


def test_resized_crops_match_the_warp_on_a_smooth_image() -> None:
    # On a linear ramp the warp's bilinear sampling is exact, so the crop path (resize, then copy a block) must
    # land on the same values up to the rounding of its box to whole pixels (≤ 0.5 px of the resized image:
    # ≤ 0.5 · 128/48 · 1 level) and of the resize to uint8 (0.5 level); away from the image's border, where the
    # antialiased resize renormalises its weights.
    ramp = torch.arange(128, dtype=torch.float32)
    image = torch.stack([ramp.expand(128, 128), ramp.view(-1, 1).expand(128, 128), 127 - ramp.expand(128, 128)], -1)
    images = image.round().to(torch.uint8).expand(32, -1, -1, -1).contiguous()
    generator = torch.Generator().manual_seed(3)
    theta, _ = sample_augmentation(32, generator, scale=(0.35, 0.9), degrees=0.0, jitter=0.0)
    assert (resized_crop_boxes(theta, 128, 48)[:, 0] > 0).all()
    out = torch.empty(32, 3, 48, 48)
    _augment_into(images, theta, torch.ones(32, 3), _base_grid(48, torch.device("cpu")), out)
    grid = F.affine_grid(theta, (32, 3, 48, 48), align_corners=False)
    expected = F.grid_sample(images.permute(0, 3, 1, 2).float() / 255, grid, align_corners=False)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))
    torch.testing.assert_close(out[inner], expected[inner], rtol=0, atol=(0.5 * 128 / 48 + 0.5 + 0.1) / 255)


def test_resized_crops_mirror_and_rotated_crops_are_prefiltered() -> None:
    images = _stripes(count=1)
    b, out, ones, zeros = 1, 64, torch.ones(1), torch.zeros(1)
    base = _base_grid(out, torch.device("cpu"))
    crop = ones * out / resize_for(out)
    plain_crop, mirrored = torch.empty(b, 3, out, out), torch.empty(b, 3, out, out)
    _augment_into(torch.from_numpy(images), affine_theta(crop, crop, zeros, zeros, zeros, ones), torch.ones(b, 3),
                  base, plain_crop)
    _augment_into(torch.from_numpy(images), affine_theta(crop, crop, zeros, zeros, zeros, -ones), torch.ones(b, 3),
                  base, mirrored)
    assert torch.equal(mirrored, plain_crop.flip(-1))
    # A quarter turn of validation's crop goes through the warp, prefiltered to 72 px: the pixels are the
    # validation crop's turned, not aliased stripes (they land on whole pixels, so bilinear adds nothing).
    theta = affine_theta(crop, crop, zeros, zeros, torch.full((1,), math.pi / 2), ones)
    assert resized_crop_boxes(theta, 128, out)[0, 0] == -1
    turned = torch.empty(b, 3, out, out)
    _augment_into(torch.from_numpy(images), theta, torch.ones(b, 3), base, turned)
    val = val_batch(torch.from_numpy(images), out)
    torch.testing.assert_close(turned, torch.rot90(val, 1, dims=(-2, -1)), rtol=0, atol=0.5 / 255 + 1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_batches_match_the_cpu() -> None:
    # Shrinking crops (a 128 px cache onto 48 px) take the resize paths, which on CUDA run in float (torch has
    # no uint8 antialiased kernel there): the same pixels as the CPU's uint8 resize, within its rounding.
    images = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (24, 128, 128, 3), dtype=np.uint8))
    theta, colour = sample_augmentation(24, torch.Generator().manual_seed(5), scale=(0.35, 1.0), degrees=10.0)
    theta[:12, 0, 1] = theta[:12, 1, 0] = 0  # half of them without rotation: the resized-crop path
    on_cpu = _augment_sampled(images, theta, colour, 48, None)
    on_cuda = _augment_sampled(images.cuda(), theta.cuda(), colour.cuda(), 48, None)
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=0, atol=1.5 / 255)
