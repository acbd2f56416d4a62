"""Schedule, optimiser groups, metrics, RNG state, TTA and DDP against hand-computed or single-process oracles."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from miniplaces.config import TrainConfig
from miniplaces.data.synth import synthesize
from miniplaces.engine.checkpoint import load_checkpoint, save_checkpoint
from miniplaces.engine.loaders import ResumableSampler
from miniplaces.engine.metrics import RunningSums, accuracy
from miniplaces.engine.optim import build_optimizer
from miniplaces.engine.schedule import warmup_cosine
from miniplaces.engine.state import rng_state, set_rng_state
from miniplaces.engine.train import evaluate, train_one_epoch, tta_logits
from miniplaces.models import create_model, list_models, model_card
from miniplaces.workflows.train import train

SRC = Path(__file__).resolve().parents[1] / "src"


def test_warmup_then_cosine_per_iteration() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.4)
    sched = warmup_cosine(opt, total_steps=14, warmup_steps=4, min_lr=0.04)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    expected = [0.04 + 0.36 * 0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(10)]
    assert lrs[4:] == pytest.approx(expected)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.04)


def test_no_weight_decay_on_norms_and_biases() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.rand(1, 3, 5, 5))
    opt = build_optimizer(model, "adamw", lr=0.01, weight_decay=0.05, no_wd_norm_bias=True)
    decayed, plain = opt.param_groups
    assert {p.ndim for p in decayed["params"]} == {2, 4} and decayed["weight_decay"] == 0.05
    assert {p.ndim for p in plain["params"]} == {1} and plain["weight_decay"] == 0.0 and len(plain["params"]) == 4
    single = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4)
    assert len(single.param_groups) == 1 and single.param_groups[0]["momentum"] == 0.9
    assert not single.param_groups[0]["nesterov"]


def test_nesterov_sgd_steps_as_torch_defines_it() -> None:
    """Two steps of ours with nesterov=True move the weights as torch's Nesterov SGD does, and not as plain
    momentum does (the oracle is torch.optim.SGD itself, built on a copy of the weights)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    ours = build_optimizer(model, "sgd", lr=0.1, weight_decay=1e-3, momentum=0.9, nesterov=True)
    reference, plain = copy.deepcopy(model), copy.deepcopy(model)
    oracle = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    no_nesterov = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x = torch.randn(8, 4)
    for _ in range(2):
        for net, opt in ((model, ours), (reference, oracle), (plain, no_nesterov)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    assert torch.allclose(model.weight, reference.weight) and not torch.allclose(model.weight, plain.weight)


def test_topk_accuracy_and_running_sums() -> None:
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2], [0.3, 0.2, 0.5], [0.2, 0.5, 0.3]])
    target = torch.tensor([1, 2, 0, 0])
    top1, top2 = accuracy(logits, target, topk=(1, 2))
    assert (top1, top2) == (25.0, 75.0)  # sample 1: right; 2: 2nd; 3: 2nd; 4: 3rd
    sums = RunningSums()
    sums.update(torch.tensor(2.0), torch.tensor(1), torch.tensor(3), 4)
    sums.update(torch.tensor(1.0), torch.tensor(2), torch.tensor(2), 2)
    assert sums.averages() == pytest.approx({"loss": 10 / 6, "top1": 50.0, "top5": 500 / 6})


def test_rng_state_survives_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    model = create_model("simplenet", num_classes=2)
    path = save_checkpoint({"model": {"name": "simplenet", "kwargs": {}}, "state_dict": model.state_dict(),
                            "rng": rng_state(torch.device("cpu"))}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    set_rng_state(load_checkpoint(path)["rng"], torch.device("cpu"))
    got = (torch.rand(3), np.random.rand(3), np.random.normal(), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2:] == expected[2:]


def test_sampler_resumes_mid_epoch_and_shards_like_distributed_sampler() -> None:
    data = list(range(10))
    whole = ResumableSampler(data, rank=0, world_size=1, seed=5)
    whole.set_epoch(3)
    order = list(whole)
    whole.start = 4
    assert list(whole) == order[4:] and len(whole) == 6
    shards = [ResumableSampler(data, rank=r, world_size=2, seed=5) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    assert sorted(i for s in shards for i, _, _ in s) == sorted(data)
    assert [i for i, _, _ in shards[0]] == [i for i, _, _ in order[0::2]]
    # Each sample keeps its augmentation seed whatever process or position draws it.
    assert {i: seed for i, seed, _ in order} == {i: seed for s in shards for i, seed, _ in s}
    # Each item carries the epoch's training side to the worker that loads it (None: the config's own).
    assert {side for _, _, side in order} == {None}
    shards[0].side = 48
    assert {side for _, _, side in shards[0]} == {48}
    whole.set_epoch(4)
    whole.start = 0
    assert list(whole) != order


def test_flip_tta_averages_an_image_and_its_mirror() -> None:
    model = create_model("simplenet", num_classes=3).eval()
    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        assert torch.allclose(tta_logits(model, x, "flip"), (model(x) + model(x.flip(-1))) / 2)
    cpu = torch.device("cpu")
    plain = evaluate(model, [(x, y)], device=cpu, progress=False)
    flip = evaluate(model, [(x, y)], device=cpu, tta="flip", progress=False)
    mirrored = evaluate(model, [(x.flip(-1), y)], device=cpu, tta="flip", progress=False)
    assert flip["loss"] == pytest.approx(mirrored["loss"], rel=1e-6)  # invariant to mirroring the input
    assert flip["loss"] != pytest.approx(plain["loss"], rel=1e-6)  # and not the plain prediction


def test_torchrun_two_processes_match_one_process(tmp_path: Path) -> None:
    """Two gloo processes with 8 images each take the same first step as one process with all 16."""
    root = synthesize(tmp_path / "data", classes=4, per_class=8, val_per_class=2, image_size=32, seed=2)
    # With an EMA (of the unwrapped module under DDP), which must match as well.
    settings = dict(epochs=1, batch_size=16, lr=0.05, workers=0, image_size=32, device="cpu",
                    limit_train_batches=1, warmup_epochs=0.0, ema=True, ema_decay=0.5, ema_warmup=False)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "miniplaces", "train", "--model", "simplenet", "--root", str(root), "--name", "ddp",
           "--set", f"out_dir={tmp_path}"] + [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(dataclasses.replace(TrainConfig(root=str(root), out_dir=str(tmp_path), name="single"), **settings),
              progress=False)
    finally:
        torch.set_num_threads(threads)
    ddp = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")
    single = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    torch.manual_seed(0)  # the run's seed: its initial weights
    initial = create_model("simplenet", num_classes=4)
    moved = 0
    for key, value in single["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][key], value, rtol=1e-5, atol=1e-6)
        moved += not torch.equal(value, initial.state_dict()[key])
    assert moved > 0  # the step changed the weights, so the comparison means something
    assert ddp["ema"]["updates"] == single["ema"]["updates"] == 1
    for key, value in single["ema"]["state_dict"].items():
        torch.testing.assert_close(ddp["ema"]["state_dict"][key], value, rtol=1e-5, atol=1e-6)
        if value.is_floating_point():  # halfway between the initial and the trained weights
            torch.testing.assert_close(value, (initial.state_dict()[key] + single["state_dict"][key]) / 2)
    ddp_rows = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(ddp_rows) == 1  # written once, by rank 0
    assert len(ddp["rng"]) == 2  # each process's RNG state


@pytest.mark.parametrize("name", list_models())
def test_one_step_of_every_registered_model(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, model_card(name).optimizer, lr=0.01, weight_decay=0.0)
    sched = warmup_cosine(opt, total_steps=1, warmup_steps=0)
    batch = (torch.rand(2, 3, 32, 32), torch.tensor([0, 2]))
    out = train_one_epoch(model, [batch], opt, sched, device=torch.device("cpu"), criterion=nn.CrossEntropyLoss(),
                          clip_grad=1.0, progress=False)
    assert out["completed"] and out["steps"] == 1 and out["images"] == 2 and math.isfinite(out["loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
