"""Muon for convolution filters + SGD for the rest (`optimizer: muon`), against torch's own Muon, SGD and SVD."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from tiny_runs import assert_same_state, config, interrupt_at_step, rows, tiny_dataset, without_timing
from torch import nn

from miniplaces.cli import main
from miniplaces.config import ConfigError, TrainConfig, resolve
from miniplaces.engine.checkpoint import load_checkpoint
from miniplaces.engine.muon import MuonSGD, orthogonalize
from miniplaces.engine.optim import build_optimizer
from miniplaces.errors import MiniPlacesError
from miniplaces.models import create_model
from miniplaces.workflows.train import TrainingInterrupted, train


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_orthogonalize_approximates_the_polar_factor(shape: tuple[int, int], dtype: torch.dtype) -> None:
    """Oracle: U·Vᵀ from torch.linalg.svd. The quintic iteration leaves singular values in about [0.7, 1.2]."""
    torch.manual_seed(0)
    rank = min(shape)
    left, right = torch.linalg.qr(torch.randn(shape[0], rank))[0], torch.linalg.qr(torch.randn(shape[1], rank))[0]
    matrix = left @ torch.diag(torch.logspace(0, 1, rank)) @ right.T  # singular values from 1 to 10
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    polar = u @ vh
    out = orthogonalize(matrix, dtype=dtype)
    singular = torch.linalg.svdvals(out)
    assert out.dtype == torch.float32 and out.shape == matrix.shape
    assert 0.6 < singular.min() and singular.max() < 1.25
    assert (out * polar).sum() / (out.norm() * polar.norm()) > 0.97


def test_muon_steps_a_one_by_one_convolution_as_torch_muon_steps_its_matrix() -> None:
    """A 1×1 convolution's filters are a (out, in) matrix, which torch.optim.Muon takes. Fed the same two
    gradients, ours moves them as torch's does, except that ours first rescales the filters to norm √out."""
    torch.manual_seed(0)
    out_channels = 8
    start = torch.randn(out_channels, out_channels)
    start *= out_channels ** 0.5 / start.norm()  # already at the norm ours keeps, so step 1 is torch's exactly
    ours = nn.Parameter(start.clone().view(out_channels, out_channels, 1, 1))
    theirs = nn.Parameter(start.clone())
    mine = MuonSGD([{"params": [ours], "muon": True}], lr=0.05, momentum=0.6, nesterov=True,
                   ns_dtype=torch.bfloat16)
    oracle = torch.optim.Muon([theirs], lr=0.05, momentum=0.6, nesterov=True, weight_decay=0.0)
    grads = [torch.randn(out_channels, out_channels) for _ in range(2)]
    ours.grad, theirs.grad = grads[0].view_as(ours).clone(), grads[0].clone()
    mine.step(), oracle.step()
    torch.testing.assert_close(ours.detach().view_as(theirs), theirs.detach(), rtol=0, atol=1e-6)
    before = theirs.detach().clone()
    ours.grad, theirs.grad = grads[1].view_as(ours).clone(), grads[1].clone()
    mine.step(), oracle.step()
    rescaled = before * out_channels ** 0.5 / before.norm()
    torch.testing.assert_close(ours.detach().view_as(theirs), rescaled - (before - theirs.detach()),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(mine.state[ours]["momentum_buffer"].view_as(theirs),
                               oracle.state[theirs]["momentum_buffer"])


def test_a_muon_step_ignores_the_filters_scale() -> None:
    """BatchNorm after a convolution makes its filters' scale irrelevant; so does Muon's step."""
    torch.manual_seed(0)
    weight = torch.randn(6, 3, 3, 3)
    grad = torch.randn_like(weight)
    moved = []
    for scale in (1.0, 10.0):
        p = nn.Parameter(weight * scale)
        p.grad = grad.clone()
        MuonSGD([{"params": [p], "muon": True}], lr=0.1, ns_dtype=torch.float32).step()
        moved.append(p.detach())
    torch.testing.assert_close(moved[0], moved[1])


def test_muon_groups_filters_apart_and_steps_the_rest_as_torch_sgd() -> None:
    torch.manual_seed(0)
    model = create_model("fastnet", num_classes=5, widths=(8, 16), stem_width=8, freeze_stem=True)
    optimizer = build_optimizer(model, "muon", lr=0.2, weight_decay=1e-3, momentum=0.9, nesterov=True,
                                no_wd_norm_bias=True, muon_lr=0.05, muon_momentum=0.6)
    decayed, undecayed, muon = optimizer.param_groups
    stem = model.features[0][0].weight
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight is not stem]
    assert {id(p) for p in muon["params"]} == {id(p) for p in convs}  # every trained filter, not the frozen stem
    assert (muon["lr"], muon["momentum"], muon["nesterov"], muon["weight_decay"]) == (0.05, 0.6, True, 0.0)
    assert [p is model.fc.weight for p in decayed["params"]] == [True] and decayed["weight_decay"] == 1e-3
    assert {p.ndim for p in undecayed["params"]} == {1} and undecayed["weight_decay"] == 0.0
    # The head steps as torch's Nesterov SGD moves it (the oracle runs on a copy).
    head = copy.deepcopy(model.fc)
    oracle = torch.optim.SGD([{"params": [head.weight]}, {"params": [head.bias], "weight_decay": 0.0}], lr=0.2,
                             momentum=0.9, weight_decay=1e-3, nesterov=True)
    x = torch.rand(4, 3, 32, 32)
    for _ in range(2):
        optimizer.zero_grad(), oracle.zero_grad()
        model(x).square().sum().backward()
        for mine, theirs in zip(model.fc.parameters(), head.parameters(), strict=True):
            theirs.grad = mine.grad.clone()
        optimizer.step(), oracle.step()
    torch.testing.assert_close(model.fc.weight, head.weight)
    torch.testing.assert_close(model.fc.bias, head.bias)


def test_muon_needs_filters_that_train() -> None:
    with pytest.raises(MiniPlacesError, match="optimizer muon trains convolution filters.*use sgd or adamw"):
        build_optimizer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), "muon", lr=0.1, weight_decay=0.0)
    with pytest.raises(ValueError, match="convolution filters"):
        MuonSGD([{"params": [nn.Parameter(torch.zeros(3, 3))], "muon": True}], lr=0.1)


@pytest.mark.parametrize(("changes", "message"), [
    ({"muon_lr": 0.0}, "key 'muon_lr' must be > 0"),
    ({"muon_momentum": 1.0}, r"key 'muon_momentum' must be in \[0, 1\)"),
    ({"optimizer": "adamw", "nesterov": True}, "key 'nesterov' needs SGD"),
])
def test_muon_keys_are_checked(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(TrainConfig(**{"root": "x", "model": "fastnet", "optimizer": "muon", **changes}))


def test_muon_takes_nesterov_for_its_sgd_part() -> None:
    resolved = resolve(TrainConfig(root="x", model="fastnet", optimizer="muon", nesterov=True))
    assert (resolved.optimizer, resolved.nesterov) == ("muon", True)


def test_a_muon_run_learns_and_resumes_bit_identical(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    changes = {"model": "fastnet", "model_kwargs": {"widths": [16, 32], "stem_width": 16}, "optimizer": "muon",
               "lr": 0.2, "muon_lr": 0.05, "nesterov": True, "epochs": 3, "batch_size": 8}
    reference = train(config(data, tmp_path / "a", **changes), progress=False)
    losses = [r["train_loss"] for r in rows(reference)]
    assert losses[-1] < losses[0]
    assert load_checkpoint(reference / "checkpoints" / "last.pt")["config"]["optimizer"] == "muon"
    with pytest.raises(TrainingInterrupted):
        train(config(data, tmp_path / "b", **changes), on_step=interrupt_at_step(4), progress=False)
    assert main(["train", "--resume", str(tmp_path / "b" / "run")]) == 0
    assert_same_state(tmp_path / "b" / "run" / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")
    assert without_timing(rows(tmp_path / "b" / "run")) == without_timing(rows(reference))
