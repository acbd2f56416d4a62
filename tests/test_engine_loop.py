"""The training step (`engine.loop.Trainer`) against oracles: the label-smoothed loss end to end, the clipped
norm, fp16's unscale-before-clip order (a stub scaler on the CPU), and `sync_bn` on two gloo processes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from miniplaces.config import ConfigError, TrainConfig, resolve
from miniplaces.engine.distributed import DistInfo, unwrap_model, wrap_model
from miniplaces.engine.loaders import TrainBatches, build_train_batches
from miniplaces.engine.loop import Trainer, build_trainer
from miniplaces.engine.schedule import warmup_cosine
from miniplaces.engine.state import seed_everything
from miniplaces.models import create_model
from miniplaces.records import read_metrics
from miniplaces.workflows.train import train

TORCH_THREADS = 1
CPU = torch.device("cpu")
CLIP = 0.5


def test_one_step_trains_on_the_label_smoothed_cross_entropy(synth_root: Path, tmp_path: Path) -> None:
    """`train`'s loss of its one step is F.cross_entropy(label_smoothing=ε) of the initial model on the first batch."""
    config = resolve(TrainConfig(root=str(synth_root), out_dir=str(tmp_path), name="smooth", epochs=1, batch_size=16,
                                 workers=0, image_size=32, device="cpu", limit_train_batches=1, limit_val_batches=1,
                                 label_smoothing=0.2))
    # What `train` builds first: the model from the run's seed (simplenet: no dropout), then the batches.
    seed_everything(config.seed)
    model = create_model(config.model, image_size=config.image_size, num_classes=4).train()
    x, y = next(iter(build_train_batches(config, DistInfo(), CPU).position(0, 0)))
    with torch.no_grad():
        logits = model(x)
    expected = F.cross_entropy(logits, y, label_smoothing=0.2).item()
    # The initial logits are nearly uniform, so smoothing moves this loss little, yet 100× the tolerance below.
    assert abs(expected - F.cross_entropy(logits, y).item()) > 100 * 1e-6 * expected
    row = read_metrics(train(config, progress=False) / "metrics.jsonl")[0]
    assert row.train_loss == pytest.approx(expected, rel=1e-6)


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 2, 2, generator=generator) * 20, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _norm(grads: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()


def _step(model: nn.Module, *, clip_grad: float | None, scaler: object = None) -> list[torch.Tensor]:
    """One `Trainer.step` of `model` with SGD; the gradients the optimiser stepped with."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[torch.Tensor] = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.extend(p.grad.clone() for p in model.parameters()))
    trainer = Trainer(model, optimizer, warmup_cosine(optimizer, total_steps=1, warmup_steps=0), nn.CrossEntropyLoss(),
                      [], CPU, scaler=scaler, clip_grad=clip_grad)  # type: ignore[arg-type]
    trainer.step(*_batch())
    return seen


def test_clip_grad_scales_all_gradients_to_the_norm_together() -> None:
    free = _step(_linear(), clip_grad=None)
    clipped = _step(_linear(), clip_grad=CLIP)
    assert _norm(free) > 10 * CLIP  # large enough that clipping must act
    assert _norm(clipped) == pytest.approx(CLIP, rel=1e-5)
    for g, h in zip(free, clipped, strict=True):  # the direction stays: every gradient shrinks by one factor
        torch.testing.assert_close(h, g * (CLIP / _norm(free)))


class StubScaler:
    """`GradScaler`'s contract on the CPU: `scale` multiplies the loss, `unscale_` divides the gradients
    (once per step), `step` unscales them if that was not done yet and steps, `update` ends the step."""

    def __init__(self, factor: float) -> None:
        self.factor, self.calls, self.unscaled = factor, [], False

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        self.calls.append("scale")
        return loss * self.factor

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        self.calls.append("unscale_")
        self._unscale(optimizer)

    def _unscale(self, optimizer: torch.optim.Optimizer) -> None:
        assert not self.unscaled, "unscaled twice in one step"
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad /= self.factor
        self.unscaled = True

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.calls.append("step")
        if not self.unscaled:
            self._unscale(optimizer)
        optimizer.step()

    def update(self) -> None:
        self.calls.append("update")
        self.unscaled = False


@pytest.mark.parametrize("clip_grad", [CLIP, None])
def test_the_scaler_unscales_before_clipping_and_steps_like_no_scaler(clip_grad: float | None) -> None:
    scaler = StubScaler(1024.0)
    model, reference = _linear(), _linear()
    scaled = _step(model, clip_grad=clip_grad, scaler=scaler)
    plain = _step(reference, clip_grad=clip_grad)
    # Clipping the scaled gradients would leave them CLIP / 1024 long once unscaled.
    assert scaler.calls == (["scale", "unscale_", "step", "update"] if clip_grad else ["scale", "step", "update"])
    for g, h in zip(scaled, plain, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-6)
    if clip_grad is not None:
        assert _norm(scaled) == pytest.approx(CLIP, rel=1e-5)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))


class HandedToDdp(nn.Module):
    """Stands in for `DistributedDataParallel`, which refuses SyncBatchNorm layers on the CPU: what it is handed."""

    def __init__(self, module: nn.Module, device_ids: list[int] | None = None) -> None:
        super().__init__()
        self.module = module


def _sync_bn_rank(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, local_rank=rank, world_size=2)
        config = TrainConfig(root="unused", sync_bn=True, device="cpu")
        try:
            build_trainer(config, _bn_model(), TrainBatches([], None, 1), info, CPU, None)
            refused = ""
        except ConfigError as err:
            refused = str(err)
        model = _bn_model()
        with torch.no_grad():  # distinct weights and statistics per layer, so that a copy that lost them shows
            for i, bn in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.weight.fill_(1.5 + i)
                bn.running_mean.fill_(0.25 + i)
        before = copy.deepcopy(model.state_dict())
        nn.parallel.DistributedDataParallel = HandedToDdp  # type: ignore[misc]  # this process only
        handed = unwrap_model(wrap_model(model, info, CPU, sync_bn=True))
        plain = unwrap_model(wrap_model(_bn_model(), info, CPU, sync_bn=False))
        torch.save({
            "norms": [type(m).__name__ for m in handed.modules() if "Norm" in type(m).__name__],
            "plain_norms": [type(m).__name__ for m in plain.modules() if "Norm" in type(m).__name__],
            "kept": all(torch.equal(v, handed.state_dict()[k]) for k, v in before.items()),
            "refused": refused,
        }, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_bn_on_two_gloo_processes(tmp_path: Path) -> None:
    """DDP gets the model with every BatchNorm converted to SyncBatchNorm, weights and statistics kept.

    torch's SyncBatchNorm runs on GPUs only (no CPU kernels, and DDP refuses it on CPU modules), so the
    statistics it shares are not computed here; a CPU run that asks for it is refused by the key's name,
    on every process, instead of failing inside DDP.
    """
    mp.spawn(_sync_bn_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert result["norms"] == ["SyncBatchNorm", "SyncBatchNorm"]
        assert result["plain_norms"] == ["BatchNorm2d", "BatchNorm2d"]
        assert result["kept"]
        assert "key 'sync_bn' needs CUDA devices" in result["refused"]
