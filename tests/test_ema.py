"""`ModelEma`: the average follows timm's update rule, handles buffers, and its state round-trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from miniplaces.engine.ema import WARMUP_POWER, ModelEma


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def net() -> nn.Module:
    model = small_net()
    model(torch.rand(2, 3, 6, 6))  # materialise the lazy layer
    return model


def perturb(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
    model.train()
    model(torch.rand(4, 3, 6, 6, generator=generator))  # moves the BatchNorm statistics and its counter


def test_update_is_the_exponential_average_of_weights_and_buffers() -> None:
    model = net()
    ema = ModelEma(model, decay=0.9, warmup=False)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    perturb(model, 1)
    ema.update(model)
    after, current = ema.module.state_dict(), model.state_dict()
    for key, value in after.items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * before[key] + 0.1 * current[key]), key
            assert not torch.equal(value, current[key]), key  # differs from the raw weights
        else:  # num_batches_tracked: copied
            assert torch.equal(value, current[key]), key
    assert "1.running_mean" in after and not torch.equal(after["1.running_mean"], before["1.running_mean"])
    assert ema.updates == 1


def test_warmup_ramps_the_decay_up_to_its_ceiling() -> None:
    ema = ModelEma(net(), decay=0.99, warmup=True)
    decays = []
    for _ in range(2000):
        decays.append(ema.current_decay())
        ema.updates += 1
    assert decays[0] == 0.0  # the first update copies the model
    assert decays[1] == pytest.approx(1 - 2 ** -WARMUP_POWER)
    assert all(a <= b for a, b in zip(decays, decays[1:], strict=False))
    assert decays[-1] == 0.99
    assert ModelEma(net(), decay=0.99, warmup=False).current_decay() == 0.99


def test_copy_is_float32_eval_mode_and_frozen() -> None:
    model = net().to(torch.bfloat16).train()
    ema = ModelEma(model)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training and model.training


def test_state_round_trips_and_set_restarts() -> None:
    model = net()
    ema = ModelEma(model, decay=0.5)
    for seed in range(3):
        perturb(model, seed)
        ema.update(model)
    other = ModelEma(net(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 3
    for a, b in zip(other.module.state_dict().values(), ema.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other.set(model)
    assert other.updates == 0
    for a, b in zip(other.module.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_rejects_decay_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match="decay"):
        ModelEma(net(), decay=1.0)
