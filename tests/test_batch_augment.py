"""Batch operations: MixUp/CutMix targets, grouped automatic augmentation, random erasing,
progressive resizing; each changes what it should and is a function of its seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from miniplaces.config import TrainConfig
from miniplaces.data.batch_augment import (
    MixCut,
    auto_augment_groups,
    auto_augment_transform,
    batch_rng,
    progressive_size,
    random_erasing,
    resize_batch,
)
from miniplaces.data.loader import CachedLoader
from miniplaces.data.transforms import train_transform
from miniplaces.engine.distributed import DistInfo
from miniplaces.engine.loaders import TrainBatches
from miniplaces.engine.loop import build_trainer


def batch(b: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_mixup_mixes_images_and_targets_with_the_reversed_batch() -> None:
    x, y = batch(), torch.arange(8)
    mixed, target = MixCut(8, mixup_alpha=1.0)(x, y, batch_rng(0, 0, 0))
    lam = target[0, 0].item()
    assert 0 < lam < 1 and target[0, 7].item() == pytest.approx(1 - lam)  # soft: two labels share image 0
    assert target.shape == (8, 8) and torch.allclose(target.sum(1), torch.ones(8))
    assert torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[7], atol=1e-6)
    # Training top-1 counts the label with the largest share.
    assert target.argmax(1)[0].item() == (0 if lam > 0.5 else 7)


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area() -> None:
    x, y = batch(), torch.arange(8)
    mixed, target = MixCut(8, cutmix_alpha=1.0)(x, y, batch_rng(3, 1, 2))
    pasted = (mixed[0] != x[0]).any(0)  # (H, W) where image 0 now shows image 7
    assert torch.equal(mixed[0][:, pasted], x[-1][:, pasted])
    share = pasted.float().mean().item()
    assert target[0, 7].item() == pytest.approx(share) and target[0, 0].item() == pytest.approx(1 - share)


def test_mix_is_a_function_of_its_seed_and_prob_zero_leaves_the_batch() -> None:
    x, y = batch(), torch.arange(8) % 4
    mix = MixCut(4, mixup_alpha=0.4, cutmix_alpha=1.0)
    a, b, c = (mix(x, y, batch_rng(*parts)) for parts in [(0, 1, 2), (0, 1, 2), (0, 1, 3)])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    same, one_hot = MixCut(4, mixup_alpha=1.0, prob=0.0)(x, y, batch_rng(0))
    assert same is x and torch.equal(one_hot, torch.nn.functional.one_hot(y, 4).float())


def test_a_training_step_on_mixed_targets_takes_timm_label_smoothed_targets() -> None:
    # The run's loss (build_trainer: label_smoothing 0.1) on MixUp's probabilities is the cross-entropy with
    # timm's mixup_target, which smooths the mixed one-hot targets: on = 1-ε+ε/C, off = ε/C.
    eps, classes = 0.1, 5
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, classes))
    x, target = MixCut(classes, mixup_alpha=1.0)(batch(), torch.arange(8) % classes, batch_rng(0, 0, 0))
    with torch.no_grad():
        log_p = model(x).log_softmax(1)
    expected = -((target * (1 - eps) + eps / classes) * log_p).sum(1).mean()
    config = TrainConfig(root="unused", label_smoothing=eps, optimizer="sgd", lr=0.1, weight_decay=0.0, epochs=1)
    trainer = build_trainer(config, model, TrainBatches([], None, 1), DistInfo(), torch.device("cpu"), None)
    loss, _ = trainer.step(x, target)
    assert ((target > 0) & (target < 1)).any()  # soft targets
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["trivialaugment", "randaugment"])
def test_auto_augment_groups_change_images_per_group_and_repeat_per_seed(kind: str) -> None:
    x = batch(16, 24)
    transform = auto_augment_transform(kind)
    state = torch.get_rng_state()
    a = auto_augment_groups(x, transform, batch_rng(0, 1), groups=8)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    b = auto_augment_groups(x, transform, batch_rng(0, 1), groups=8)
    c = auto_augment_groups(x, transform, batch_rng(0, 2), groups=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x) and a.shape == x.shape
    # Each pair of images is one group with its own draw: the changes differ between groups.
    changes = {round((a[i] - x[i]).abs().mean().item(), 6) for i in range(0, 16, 2)}
    assert len(changes) > 1


def test_random_erasing_zeroes_one_rectangle_per_chosen_image() -> None:
    x = batch(64, 16) + 0.01  # no zero pixel before
    out = random_erasing(x, 0.5, batch_rng(0))
    erased = (out == 0).all(1)  # (B, H, W)
    hit = erased.flatten(1).any(1)
    assert 16 < hit.sum().item() < 48  # about half of 64
    for i in torch.nonzero(hit).flatten().tolist():
        rows, cols = erased[i].any(1), erased[i].any(0)
        # A rectangle: exactly the product of its rows and columns.
        assert torch.equal(erased[i], rows.view(-1, 1) & cols.view(1, -1))
    assert torch.equal(out[~hit], x[~hit])
    assert torch.equal(out, random_erasing(x, 0.5, batch_rng(0)))
    assert torch.equal(random_erasing(x, 0.0, batch_rng(0)), x)


def test_cache_loader_applies_the_batch_augmentations_deterministically() -> None:
    images = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(32)

    def first_batch(seed: int, **kw: object) -> torch.Tensor:
        return next(iter(CachedLoader(images, labels, 16, train=True, seed=seed, image_size=16, **kw)))[0]

    plain = first_batch(0)
    extra = first_batch(0, auto_augment="trivialaugment", random_erasing=0.5)
    assert extra.shape == plain.shape and not torch.equal(extra, plain)
    assert torch.equal(extra, first_batch(0, auto_augment="trivialaugment", random_erasing=0.5))
    assert not torch.equal(extra, first_batch(1, auto_augment="trivialaugment", random_erasing=0.5))
    # Validation batches are never augmented.
    val = CachedLoader(images, labels, 16, train=False, image_size=16, auto_augment="randaugment")
    assert torch.equal(next(iter(val))[0], next(iter(CachedLoader(images, labels, 16, train=False, image_size=16)))[0])


def test_per_sample_transform_gains_the_v2_transforms() -> None:
    image = v2.functional.to_image(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    still = {"rotation": 0.0, "color_jitter": 0.0}

    def seeded(seed: int, **kw: object) -> torch.Tensor:
        torch.manual_seed(seed)
        return train_transform(32, 36, **still, **kw)(image)  # type: ignore[arg-type]

    # RandAugment changes what the same crop (same seed) shows; random erasing zeroes a rectangle of the
    # float image (after the conversion: the other pixels keep their values).
    assert not torch.equal(seeded(3, auto_augment="randaugment"), seeded(3))
    plain, erased = seeded(4), seeded(4, random_erasing=1.0)
    assert erased.dtype == torch.float32 and 0 < (erased != plain).float().mean() < 1
    changed = (erased != plain).any(0)
    assert (erased[:, changed] == 0).all()
    rows, cols = changed.any(1), changed.any(0)
    assert torch.equal(changed, rows.view(-1, 1) & cols.view(1, -1))
    transform = train_transform(32, 36, auto_augment="trivialaugment")
    torch.manual_seed(5)
    a = transform(image)
    torch.manual_seed(5)
    assert torch.equal(a, transform(image)) and a.shape == (3, 32, 32)


def test_augmentation_strength_reaches_both_loaders() -> None:
    # A white image stays white under any crop and flip; rotation fills corners with black and colour jitter
    # scales brightness, so the study's strength changes pixels and strength 0 (crop area 1) changes none.
    images = np.full((8, 24, 24, 3), 255, dtype=np.uint8)
    labels = np.arange(8)

    def batch(**strength: float) -> torch.Tensor:
        return next(iter(CachedLoader(images, labels, 8, train=True, image_size=16, **strength)))[0]

    assert (batch() < 1).any()
    # (within float rounding: the antialiased prefilter of a shrinking crop sums weights that add up to 1)
    torch.testing.assert_close(batch(crop_min_area=1.0, rotation=0.0, color_jitter=0.0), torch.ones(8, 3, 16, 16),
                               rtol=0, atol=1e-5)
    assert (batch(crop_min_area=1.0, rotation=0.0) < 1).any()  # jitter alone still changes pixels
    image = v2.functional.to_image(images[0])
    torch.manual_seed(0)
    assert any((train_transform(16, 18)(image) < 1).any() for _ in range(4))
    assert torch.equal(train_transform(16, 18, rotation=0.0, color_jitter=0.0)(image), torch.ones(3, 16, 16))
    # The crop's smallest area: on an image half black, half white, whole-image crops (area 1) all show half
    # white, while crops of a quarter of the image and more see either side.
    halves = v2.functional.to_image(np.repeat(np.repeat([[[0], [255]]], 3, 2), 12, 1).astype(np.uint8).repeat(24, 0))

    def white_shares(crop_min_area: float) -> list[float]:
        transform = train_transform(16, 18, crop_min_area=crop_min_area, rotation=0.0, color_jitter=0.0)
        return [transform(halves).mean().item() for _ in range(20)]

    assert all(abs(share - 0.5) < 0.1 for share in white_shares(1.0))
    quarter = white_shares(0.25)
    assert max(quarter) - min(quarter) > 0.3


def test_progressive_size_schedule() -> None:
    sizes = [progressive_size(e, start_size=64, end_size=128, start_epoch=2, end_epoch=10) for e in range(12)]
    assert sizes[:3] == [64, 64, 64] and sizes[10:] == [128, 128]
    assert all(a <= b for a, b in zip(sizes, sizes[1:], strict=False)) and all(s % 8 == 0 for s in sizes)
    assert progressive_size(0, start_size=None, end_size=128, end_epoch=5) == 128


def test_resize_batch_is_antialiased_and_identity_at_full_size() -> None:
    x = batch(2, 32)
    assert resize_batch(x, 32) is x
    small = resize_batch(x, 16)
    assert small.shape == (2, 3, 16, 16)
    # The same antialiased bilinear resize as torchvision's (the per-sample pipeline's Resize).
    assert torch.allclose(small, v2.functional.resize(x, [16, 16], antialias=True), atol=1e-6)
    assert not torch.allclose(small, v2.functional.resize(x, [16, 16], antialias=False), atol=1e-3)
